# The two commands a user needs (see README): `make demo` and `make test`. Both do all set-up first.
BUILD_DIR ?= build
.PHONY: all build test demo clean
all: build
build:
	scripts/build.sh $(BUILD_DIR)
test:
	BUILD_DIR=$(BUILD_DIR) scripts/test.sh
demo: build
	scripts/demo.sh $(BUILD_DIR)
clean:
	rm -rf $(BUILD_DIR)
