// Precompiled header: the heavy headers nearly every translation unit includes. ATen rather than
// torch/torch.h keeps it small; files still include what they use.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
