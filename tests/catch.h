// Catch2 v2 (Debian) and v3 (GPU host) compatibility: include this, never Catch2 headers directly.
// Use MP_CONTAINS("text") for substring matchers (v2 Contains, v3 ContainsSubstring).
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#define MP_CONTAINS(text) Catch::Matchers::ContainsSubstring(text)
#else
#include <catch2/catch.hpp>
#define MP_CONTAINS(text) Catch::Matchers::Contains(text)
#endif
