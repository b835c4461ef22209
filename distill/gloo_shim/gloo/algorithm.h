// Stand-in for gloo/algorithm.h (see ../README.md): nothing from it is used by ProcessGroupGloo.hpp's declarations.
#pragma once
