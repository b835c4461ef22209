// Data parallelism over c10d: a TCPStore rendezvous from torchrun's environment, ProcessGroupNCCL for CUDA and
// ProcessGroupGloo for CPU, and bucketed gradient all-reduce launched from post-accumulate-grad hooks so that
// communication overlaps the rest of backward (as torch's DistributedDataParallel does).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MINIPUZZLE_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <map>

#include "distill/communicator.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {

static int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  MP_CHECK(end != v && *end == '\0', "distill: environment variable ", name, "=\"", v, "\" is not an integer");
  return int(x);
}

DistributedEnv DistributedEnv::from_environment() {
  DistributedEnv e;
  e.world_size = env_int("WORLD_SIZE", 1);
  e.rank = env_int("RANK", 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500);
  MP_CHECK(e.world_size >= 1 && e.rank >= 0 && e.rank < e.world_size, "distill: RANK=", e.rank,
           " must lie in [0, WORLD_SIZE=", e.world_size, ")");
  return e;
}

c10::Device DistributedEnv::device_for(const std::string& spec) const {
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec == "cuda") return c10::Device(c10::kCUDA, c10::DeviceIndex(local_rank));
  const std::string prefix = "cuda:";
  const bool indexed = spec.size() > prefix.size() && spec.compare(0, prefix.size(), prefix) == 0 &&
                       spec.find_first_not_of("0123456789", prefix.size()) == std::string::npos &&
                       spec.size() - prefix.size() <= 4;
  MP_CHECK(indexed, "distill: --device must be cpu, cuda or cuda:N, found \"", spec, "\"");
  MP_CHECK(world_size == 1, "distill: --device ", spec, " names one GPU but ", world_size, " processes were "
           "launched; use --device cuda (each rank takes GPU LOCAL_RANK)");
  return c10::Device(c10::kCUDA, c10::DeviceIndex(std::stoi(spec.substr(prefix.size()))));
}

// ProcessGroupNCCL for CUDA, ProcessGroupGloo (on the loopback device for a local master) for CPU.
static c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                      c10::Device device, const std::string& master_addr) {
  if (device.is_cuda()) {
#ifdef MINIPUZZLE_WITH_NCCL
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, c10d::ProcessGroupNCCL::Options::create());
#else
    fail("distill: data parallelism on CUDA needs NCCL, and this build has no nccl.h (rebuild with NCCL)");
#endif
  }
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::minutes(5));
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  const bool loopback = master_addr == "localhost" || master_addr.rfind("127.", 0) == 0;
  if (ifname && *ifname)
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else if (loopback)
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
}

std::shared_ptr<Communicator> make_communicator(const DistributedEnv& env, c10::Device device) {
  if (env.world_size == 1) return nullptr;
  auto comm = std::make_shared<Communicator>();
  comm->rank = env.rank;
  comm->size = env.world_size;
  comm->device = device;
  c10d::TCPStoreOptions so;
  so.port = uint16_t(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = size_t(env.world_size);
  so.timeout = std::chrono::minutes(5);
  comm->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  comm->backend = make_backend(comm->store, env.rank, env.world_size, device, env.master_addr);
  return comm;
}

std::shared_ptr<Communicator> make_subgroup(const Communicator& parent, const std::vector<int>& ranks,
                                            const std::string& tag) {
  int mine = -1;
  for (size_t k = 0; k < ranks.size(); ++k)
    if (ranks[k] == parent.rank) mine = int(k);
  MP_CHECK(mine >= 0, "distill: rank ", parent.rank, " is not in its own process group \"", tag, "\"");
  if (ranks.size() == 1) return nullptr;
  auto comm = std::make_shared<Communicator>();
  comm->rank = mine;
  comm->size = int(ranks.size());
  comm->device = parent.device;
  comm->store = c10::make_intrusive<c10d::PrefixStore>(tag, parent.store);
  const char* addr = std::getenv("MASTER_ADDR");
  comm->backend = make_backend(comm->store, comm->rank, comm->size, parent.device, addr && *addr ? addr : "127.0.0.1");
  return comm;
}

int communicator_rank(const Communicator* comm) { return comm ? comm->rank : 0; }
int communicator_size(const Communicator* comm) { return comm ? comm->size : 1; }

void all_reduce_sum(Communicator* comm, at::Tensor& tensor) {
  if (!comm) return;
  std::vector<at::Tensor> v{tensor.to(comm->device).contiguous()};
  comm->backend->allreduce(v)->wait();
  tensor.copy_(v[0]);
}

void barrier(Communicator* comm) {
  if (!comm) return;
  at::Tensor flag = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(comm->device));
  all_reduce_sum(comm, flag);  // an all-reduce is a barrier on both backends, without device bookkeeping
}

// ---------------------------------------------------------------------------------------------------------------
struct GradientSync::Impl {
  struct Bucket {
    std::vector<size_t> members;  // indices into params
    int64_t pending = 0;
    bool launched = false;
    at::Tensor flat;
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::shared_ptr<Communicator> comm;
  std::vector<at::Tensor> params;
  std::vector<size_t> bucket_of;
  std::vector<Bucket> buckets;
  bool synchronize = false;

  void launch(Bucket& b) {
    b.launched = true;
    if (!comm) return;  // a single process: gradients are already complete
    std::vector<at::Tensor> parts;
    for (size_t i : b.members) {
      at::Tensor g = params[i].grad();
      parts.push_back(g.defined() ? g.reshape(-1) : at::zeros({params[i].numel()}, params[i].options()));
    }
    b.flat = at::cat(parts);
    std::vector<at::Tensor> v{b.flat};
    b.work = comm->backend->allreduce(v);
  }

  void on_gradient(size_t index) {
    if (!synchronize) return;
    Bucket& b = buckets[bucket_of[index]];
    if (--b.pending == 0 && !b.launched) launch(b);
  }
};

namespace {
struct BucketHook : torch::autograd::PostAccumulateGradHook {
  GradientSync::Impl* impl;
  size_t index;
  BucketHook(GradientSync::Impl* i, size_t k) : impl(i), index(k) {}
  void operator()(const torch::autograd::Variable&) override { impl->on_gradient(index); }
};
}  // namespace

GradientSync::GradientSync(std::shared_ptr<Communicator> comm, const std::vector<at::Tensor>& params,
                           int64_t bucket_bytes)
    : impl_(std::make_unique<Impl>()) {
  impl_->comm = std::move(comm);
  impl_->params = params;
  impl_->bucket_of.assign(params.size(), 0);
  // Reverse order: the last layers' gradients are produced first by backward. One bucket holds one dtype.
  std::map<at::ScalarType, size_t> open;  // dtype -> index of the bucket being filled
  std::map<size_t, int64_t> fill;
  for (size_t k = params.size(); k-- > 0;) {
    const at::Tensor& p = params[k];
    const int64_t bytes = p.numel() * int64_t(p.element_size());
    auto it = open.find(p.scalar_type());
    if (it == open.end() || fill[it->second] + bytes > bucket_bytes) {
      impl_->buckets.emplace_back();
      open[p.scalar_type()] = impl_->buckets.size() - 1;
      it = open.find(p.scalar_type());
    }
    impl_->buckets[it->second].members.push_back(k);
    fill[it->second] += bytes;
    impl_->bucket_of[k] = it->second;
    torch::autograd::impl::set_post_acc_grad_hooks(p, std::make_unique<BucketHook>(impl_.get(), k));
  }
}

GradientSync::~GradientSync() {
  for (auto& p : impl_->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientSync::begin_backward(bool synchronize) {
  impl_->synchronize = synchronize;
  for (auto& b : impl_->buckets) {
    b.pending = int64_t(b.members.size());
    b.launched = false;
    b.work.reset();
    b.flat = at::Tensor();
  }
}

void GradientSync::finish() {
  at::NoGradGuard no_grad;
  for (auto& b : impl_->buckets)
    if (!b.launched) impl_->launch(b);  // parameters that got no gradient this step
  if (!impl_->comm) return;
  const double world = impl_->comm->size;
  for (auto& b : impl_->buckets) {
    b.work->wait();
    b.flat.div_(world);
    int64_t offset = 0;
    for (size_t i : b.members) {
      at::Tensor& p = impl_->params[i];
      at::Tensor slice = b.flat.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(slice);
      else
        p.mutable_grad() = slice.clone();
      offset += p.numel();
    }
    b.flat = at::Tensor();
    b.work.reset();
  }
}

}  // namespace mp::distill
