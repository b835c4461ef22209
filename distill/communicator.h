// Internal to mp_distill: the c10d process group behind mp::distill::Communicator (distill/ddp.cpp builds it;
// distill/fsdp.cpp calls its collectives directly).
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <memory>
#include <string>
#include <vector>

namespace mp::distill {

class Communicator {
 public:
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0, size = 1;
  c10::Device device{c10::kCPU};
};

// A process group over `ranks` (ranks of `parent`, ascending; the caller must be one of them), rendezvous through
// the parent's store under `tag` (unique per group). Only the members call it; every member with the same
// arguments. A group of one rank returns nullptr (nothing to communicate).
std::shared_ptr<Communicator> make_subgroup(const Communicator& parent, const std::vector<int>& ranks,
                                            const std::string& tag);

}  // namespace mp::distill
