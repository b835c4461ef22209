// Catch2 v2 (Debian) and v3 (GPU host) compatibility: include this, never Catch2 headers directly.
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
