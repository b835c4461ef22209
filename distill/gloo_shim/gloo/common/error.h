// Stand-in for gloo/common/error.h (see ../../README.md).
#pragma once
