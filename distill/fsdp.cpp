// Fully sharded data parallelism (include/minipuzzle/fsdp.h): flat per-layer units, all-gather before use,
// reduce-scatter after backward, AdamW on the shards.
//
// How a layer's full parameters come and go without autograd noticing: each parameter the model reads is a leaf
// tensor (requires_grad) set onto the unit's flat storage at its offset. Freeing sets the storage's data pointer to
// null and its size to 0; gathering allocates it again from the same allocator and the collective writes into it.
// The tensors autograd saved for backward (the parameters themselves, or views of them) keep pointing at that
// storage, so after the regather in backward they read the same values again. Nothing writes the parameters through
// the dispatcher (the collectives write raw memory; a single process copies through variable_data(), which has its
// own version counter), so the saved tensors' version checks hold.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <set>

#include "distill/communicator.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fsdp.h"

namespace mp::distill {

ShardMode shard_mode_from_name(const std::string& name) {
  if (name == "none") return ShardMode::none;
  if (name == "zero2") return ShardMode::zero2;
  if (name == "zero3") return ShardMode::zero3;
  fail("distill: --shard must be none, zero2 or zero3, found \"", name, "\"");
}

const char* shard_mode_name(ShardMode mode) {
  switch (mode) {
    case ShardMode::none: return "none";
    case ShardMode::zero2: return "zero2";
    case ShardMode::zero3: return "zero3";
  }
  return "none";
}

namespace {
int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// "backbone.layers.<i>.<rest>" -> i, else -1.
int64_t layer_of(const std::string& name) {
  static const std::string prefix = "backbone.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  size_t end = name.find('.', prefix.size());
  if (end == std::string::npos) return -1;
  return std::stoll(name.substr(prefix.size(), end - prefix.size()));
}
}  // namespace

int64_t FlatLayout::Unit::shard_length(int64_t group) const {
  return align_up(std::max<int64_t>(numel, 1), kAlign * group) / group;
}

FlatLayout FlatLayout::of(const ModelConfig& config, const std::map<std::string, at::Tensor>& params) {
  const int64_t L = config.num_layers();
  FlatLayout f;
  f.units.resize(size_t(L) + 1);
  for (int64_t i = 0; i < L; ++i) {
    f.units[size_t(i)].name = "layer." + std::to_string(i);
    f.units[size_t(i)].layer = i;
  }
  f.units[size_t(L)].name = "root";
  struct Item {
    std::vector<std::string> names;
    at::Tensor t;
  };
  std::vector<std::vector<Item>> items(size_t(L) + 1);
  std::map<const void*, std::pair<size_t, size_t>> where;
  for (auto& [name, t] : params) {
    auto it = where.find(t.unsafeGetTensorImpl());
    if (it != where.end()) {
      items[it->second.first][it->second.second].names.push_back(name);
      continue;
    }
    const int64_t layer = layer_of(name);
    MP_CHECK(layer < L, "distill: parameter ", name, " names layer ", layer, " of a ", L, "-layer model");
    const size_t u = layer < 0 ? size_t(L) : size_t(layer);
    MP_CHECK(t.is_floating_point(), "distill: parameter ", name, " is not floating point");
    where[t.unsafeGetTensorImpl()] = {u, items[u].size()};
    items[u].push_back({{name}, t});
  }
  for (size_t u = 0; u < items.size(); ++u) {
    Unit& unit = f.units[u];
    int64_t offset = 0;
    for (bool decay : {true, false}) {
      for (auto& item : items[u]) {
        if (AdamW::decays(item.names[0], item.t) != decay) continue;
        Entry e;
        e.names = item.names;
        e.shape = item.t.sizes().vec();
        e.numel = item.t.numel();
        e.offset = offset;
        e.decay = decay;
        offset = align_up(offset + e.numel, kAlign);
        unit.entries.push_back(e);
      }
      if (decay) unit.decay_numel = offset;
    }
    unit.numel = offset;
  }
  return f;
}

json FlatLayout::to_json() const {
  json units_j = json::array();
  for (auto& u : units) {
    json entries = json::array();
    for (auto& e : u.entries)
      entries.push_back({{"names", e.names}, {"shape", e.shape}, {"offset", e.offset}, {"numel", e.numel}, {"decay", e.decay}});
    units_j.push_back({{"name", u.name}, {"numel", u.numel}, {"decay_numel", u.decay_numel}, {"entries", entries}});
  }
  return {{"align", kAlign}, {"units", units_j}};
}

// ---------------------------------------------------------------------------------------------------------------
struct ShardedStudent::Impl {
  struct Unit {
    int64_t L = 0, padded = 0;
    at::Tensor full;                 // [padded] flat parameters (storage freed while a zero3 layer is not in use)
    std::vector<at::Tensor> views;   // per layout entry: the tensor the model reads
    at::Tensor shard;                // [L] this rank's parameters
    at::Tensor grad_shard;           // [L] this step's gradient (sum over ranks and micro-batches, then mean)
    bool release_after_use = false;  // zero3 layer
    bool valid = false;              // `full` holds the current parameters
    c10::intrusive_ptr<c10d::Work> gather;
    int64_t trainable = 0, pending = 0;
    bool reduced = false;
  };
  struct InFlight {
    size_t unit;
    at::Tensor input, output;
    c10::intrusive_ptr<c10d::Work> work;
  };

  ShardedStudent* owner = nullptr;
  NemotronH* model = nullptr;
  std::shared_ptr<Communicator> world, shard_comm, rep_comm;
  ShardMode mode = ShardMode::zero3;
  int64_t world_size = 1, group = 1, shard_rank = 0, replica = 0;
  FlatLayout layout;
  std::vector<Unit> units;
  std::deque<InFlight> in_flight;
  std::unique_ptr<AdamW> optimizer;
  bool collecting = false;  // inside a training backward: gradient hooks reduce-scatter
  at::TensorOptions opts;

  size_t root() const { return units.size() - 1; }

  void allocate(Unit& u) {
    c10::StorageImpl* s = u.full.storage().unsafeGetStorageImpl();
    const size_t bytes = size_t(u.padded) * u.full.element_size();
    if (s->nbytes() == bytes) return;
    s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
    s->set_nbytes(bytes);
  }
  void free_storage(Unit& u) {
    c10::StorageImpl* s = u.full.storage().unsafeGetStorageImpl();
    s->set_data_ptr_noswap(at::DataPtr(nullptr, s->device()));
    s->set_nbytes(0);
    u.valid = false;
  }
  void release(size_t i) {
    Unit& u = units[i];
    if (!u.release_after_use) return;
    if (u.gather) {
      u.gather->wait();
      u.gather.reset();
    }
    free_storage(u);
  }
  void launch_gather(size_t i) {
    Unit& u = units[i];
    if (u.valid || u.gather) return;
    allocate(u);
    at::Tensor out = u.full.variable_data();
    if (!shard_comm) {
      out.copy_(u.shard);
      u.valid = true;
      return;
    }
    u.gather = shard_comm->backend->_allgather_base(out, u.shard);
  }
  void wait_gather(size_t i) {
    launch_gather(i);
    Unit& u = units[i];
    if (u.gather) {
      u.gather->wait();
      u.gather.reset();
    }
    u.valid = true;
  }

  void complete_oldest() {
    InFlight f = std::move(in_flight.front());
    in_flight.pop_front();
    if (f.work) f.work->wait();
    units[f.unit].grad_shard.add_(f.output);
  }
  // The unit's gradients are complete for this micro-batch: flatten, free the parameters (zero3) and the full
  // gradients, reduce-scatter asynchronously.
  void reduce(size_t i) {
    Unit& u = units[i];
    if (u.reduced) return;
    u.reduced = true;
    at::NoGradGuard no_grad;
    at::Tensor flat = at::zeros({u.padded}, opts);
    const FlatLayout::Unit& lu = layout.units[i];
    for (size_t e = 0; e < lu.entries.size(); ++e) {
      at::Tensor& v = u.views[e];
      if (v.grad().defined()) flat.narrow(0, lu.entries[e].offset, lu.entries[e].numel).copy_(v.grad().reshape(-1));
      v.mutable_grad() = at::Tensor();
    }
    release(i);
    InFlight f{i, flat, at::Tensor(), {}};
    if (!shard_comm) {
      f.output = flat;
    } else {
      f.output = at::empty({u.L}, opts);
      f.work = shard_comm->backend->_reduce_scatter_base(f.output, flat, c10d::ReduceScatterOptions{});
    }
    in_flight.push_back(std::move(f));
    while (in_flight.size() > 2) complete_oldest();  // bounds the full-size gradient buffers alive
  }
  void on_gradient(size_t i) {
    if (!collecting) return;
    if (--units[i].pending == 0) reduce(i);
  }
  // Backward reached layers [first, last): gather them, prefetch the layer before.
  void before_backward(int64_t first, int64_t last) {
    if (!collecting) return;
    for (int64_t i = first; i < last; ++i) launch_gather(size_t(i));
    for (int64_t i = first; i < last; ++i) wait_gather(size_t(i));
    if (first > 0) launch_gather(size_t(first - 1));
  }
  void begin_backward() {
    for (auto& u : units) {
      u.pending = u.trainable;
      u.reduced = false;
    }
    collecting = true;
  }
  void finish_backward() {
    for (size_t i = 0; i < units.size(); ++i)
      if (!units[i].reduced && units[i].trainable > 0) reduce(i);  // parameters that got no gradient
    while (!in_flight.empty()) complete_oldest();
    for (size_t i = 0; i < units.size(); ++i) release(i);
    collecting = false;
  }
  // After the update: units kept gathered take their new values.
  void refresh() {
    for (size_t i = 0; i < units.size(); ++i) {
      units[i].valid = false;
      if (!units[i].release_after_use) launch_gather(i);
    }
    for (size_t i = 0; i < units.size(); ++i)
      if (!units[i].release_after_use) wait_gather(i);
  }
};

namespace {
struct UnitGradHook : torch::autograd::PostAccumulateGradHook {
  ShardedStudent::Impl* impl;
  size_t unit;
  UnitGradHook(ShardedStudent::Impl* i, size_t u) : impl(i), unit(u) {}
  void operator()(const torch::autograd::Variable&) override { impl->on_gradient(unit); }
};
}  // namespace

ShardedStudent::ShardedStudent(NemotronH& model, std::shared_ptr<Communicator> comm, ShardMode mode,
                               int64_t shard_group_size, AdamWOptions adamw, double offload_fraction)
    : impl_(std::make_unique<Impl>()) {
  MP_CHECK(mode != ShardMode::none, "distill: ShardedStudent needs --shard zero2 or zero3");
  Impl& m = *impl_;
  m.owner = this;
  m.model = &model;
  m.mode = mode;
  m.world = comm;
  m.world_size = communicator_size(comm.get());
  const int64_t rank = communicator_rank(comm.get());
  m.group = shard_group_size > 0 ? shard_group_size : m.world_size;
  MP_CHECK(m.group <= m.world_size && m.world_size % m.group == 0, "distill: --shard-group-size ", m.group,
           " must divide the world size ", m.world_size);
  m.shard_rank = rank % m.group;
  m.replica = rank / m.group;
  if (comm && m.group == m.world_size) {
    m.shard_comm = comm;
  } else if (comm) {
    // Hybrid: shard groups of consecutive ranks (a node under torchrun), replica groups across them.
    std::vector<int> shard_ranks, rep_ranks;
    for (int64_t k = 0; k < m.group; ++k) shard_ranks.push_back(int(m.replica * m.group + k));
    for (int64_t k = 0; k < m.world_size / m.group; ++k) rep_ranks.push_back(int(k * m.group + m.shard_rank));
    m.shard_comm = make_subgroup(*comm, shard_ranks, "fsdp-shard-" + std::to_string(m.replica) + "/");
    m.rep_comm = make_subgroup(*comm, rep_ranks, "fsdp-replica-" + std::to_string(m.shard_rank) + "/");
  }
  m.layout = FlatLayout::of(model.config(), model.parameters());
  m.opts = at::TensorOptions().dtype(model.dtype()).device(model.device());
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> originals = model.parameters();
  m.units.resize(m.layout.units.size());
  for (size_t i = 0; i < m.units.size(); ++i) {
    const FlatLayout::Unit& lu = m.layout.units[i];
    Impl::Unit& u = m.units[i];
    u.L = lu.shard_length(m.group);
    u.padded = u.L * m.group;
    u.full = at::zeros({u.padded}, m.opts);
    for (auto& e : lu.entries) {
      const at::Tensor& src = originals.at(e.names[0]);
      u.full.narrow(0, e.offset, e.numel).copy_(src.reshape(-1));
      at::Tensor v = at::empty({0}, m.opts);
      v.set_(u.full.storage(), e.offset, e.shape);
      v.set_requires_grad(src.requires_grad());
      if (src.requires_grad()) {
        ++u.trainable;
        torch::autograd::impl::set_post_acc_grad_hooks(v, std::make_unique<UnitGradHook>(impl_.get(), i));
      }
      u.views.push_back(v);
      for (auto& name : e.names) model.parameters()[name] = v;
    }
    u.shard = u.full.narrow(0, m.shard_rank * u.L, u.L).clone();
    u.grad_shard = at::zeros({u.L}, m.opts);
    u.valid = true;
    u.release_after_use = mode == ShardMode::zero3 && lu.layer >= 0;
    if (u.release_after_use) m.free_storage(u);
  }
  originals.clear();
  // AdamW over the shards: per unit the part inside the decayed range and the rest (names tell AdamW::decays).
  std::map<std::string, at::Tensor> params;
  for (size_t i = 0; i < m.units.size(); ++i) {
    const FlatLayout::Unit& lu = m.layout.units[i];
    Impl::Unit& u = m.units[i];
    const int64_t begin = m.shard_rank * u.L;
    const int64_t d = std::clamp<int64_t>(lu.decay_numel - begin, 0, u.L);
    if (d > 0) {
      at::Tensor t = u.shard.narrow(0, 0, d);
      t.mutable_grad() = u.grad_shard.narrow(0, 0, d);
      params["flat.decay/" + lu.name] = t;
    }
    if (u.L - d > 0) {
      at::Tensor t = u.shard.narrow(0, d, u.L - d);
      t.mutable_grad() = u.grad_shard.narrow(0, d, u.L - d);
      params["flat.nodecay/" + lu.name] = t;
    }
  }
  m.optimizer = std::make_unique<AdamW>(params, adamw, offload_fraction);
}

ShardedStudent::~ShardedStudent() {
  for (auto& u : impl_->units)
    for (auto& v : u.views)
      if (v.requires_grad()) torch::autograd::impl::set_post_acc_grad_hooks(v, nullptr);
}

AdamW& ShardedStudent::optimizer() { return *impl_->optimizer; }
const AdamW& ShardedStudent::optimizer() const { return *impl_->optimizer; }
ShardMode ShardedStudent::mode() const { return impl_->mode; }
const FlatLayout& ShardedStudent::layout() const { return impl_->layout; }
int64_t ShardedStudent::shard_group_size() const { return impl_->group; }
int64_t ShardedStudent::shard_rank() const { return impl_->shard_rank; }
int64_t ShardedStudent::replica_index() const { return impl_->replica; }

at::Tensor ShardedStudent::forward_hidden(const at::Tensor& input_ids, int64_t checkpoint_layers,
                                          const ForwardOptions& options) const {
  Impl& m = *impl_;
  const NemotronH& model = *m.model;
  m.wait_gather(m.root());
  at::Tensor h = model.embed(input_ids);
  const bool grad = at::GradMode::is_enabled();
  const int64_t n = model.config().num_layers();
  const int64_t k = checkpoint_layers > 0 && grad ? checkpoint_layers : 1;
  for (int64_t first = 0; first < n; first += k) {
    const int64_t last = std::min(n, first + k);
    for (int64_t i = first; i < last; ++i) m.launch_gather(size_t(i));
    for (int64_t i = first; i < last; ++i) m.wait_gather(size_t(i));
    if (last < n) m.launch_gather(size_t(last));  // the next layer's gather overlaps this segment's compute
    at::Tensor y;
    if (checkpoint_layers > 0 && grad) {
      std::vector<at::Tensor> params;
      for (int64_t i = first; i < last; ++i)
        for (auto& v : m.units[size_t(i)].views)
          if (v.requires_grad()) params.push_back(v);
      const NemotronH* net = &model;
      ActivationObserver* observer = options.observer;
      y = checkpointed(
          [net, first, last, observer](const at::Tensor& x) {
            // As checkpointed_forward_hidden: the forward (gradients off) is observed, the recomputation is not.
            ForwardOptions fo;
            if (!at::GradMode::is_enabled()) fo.observer = observer;
            at::Tensor z = x;
            for (int64_t i = first; i < last; ++i) z = net->forward_layer(i, z, fo);
            return z;
          },
          h, params);
    } else {
      y = model.forward_layer(first, h, options);
    }
    if (grad && y.requires_grad() && m.mode == ShardMode::zero3) {
      Impl* impl = impl_.get();
      y.register_hook([impl, first, last](const at::TensorBase&) { impl->before_backward(first, last); });
    }
    for (int64_t i = first; i < last; ++i) m.release(size_t(i));
    h = y;
  }
  return model.final_norm(h);
}

StepResult ShardedStudent::train_step(Teacher* teacher, const std::vector<Batch>& micro_batches, double lr,
                                      double clip, const LossOptions& options) {
  Impl& m = *impl_;
  {
    at::NoGradGuard no_grad;
    for (auto& u : m.units) u.grad_shard.zero_();
  }
  LossOptions o = options;
  o.sharded = this;
  const int64_t count = int64_t(micro_batches.size());
  at::Tensor loss_sum = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(m.model->device()));
  for (int64_t k = 0; k < count; ++k) {
    m.begin_backward();
    at::Tensor loss = micro_batch_loss(*m.model, teacher, micro_batches[k], o) / double(count);
    loss.backward();
    m.finish_backward();
    loss_sum += loss.detach().to(at::kDouble);
  }
  at::NoGradGuard no_grad;
  if (m.rep_comm)
    for (auto& u : m.units) {
      std::vector<at::Tensor> v{u.grad_shard};
      m.rep_comm->backend->allreduce(v)->wait();
    }
  if (m.world_size > 1)
    for (auto& u : m.units) u.grad_shard.div_(double(m.world_size));
  at::Tensor loss_cpu = loss_sum.cpu();
  all_reduce_sum(m.world.get(), loss_cpu);
  StepResult r;
  r.loss = loss_cpu.item<double>() / double(m.world_size);
  // Global gradient norm: the shards' squares summed over the shard group (replicas hold the same shards).
  at::Tensor sq = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(m.model->device()));
  for (auto& u : m.units) sq += at::linalg_vector_norm(u.grad_shard, 2, {}, false, at::kDouble).pow(2);
  at::Tensor sq_cpu = sq.cpu();
  all_reduce_sum(m.shard_comm.get(), sq_cpu);
  const double norm = std::sqrt(sq_cpu.item<double>());
  r.grad_norm = norm;
  if (std::isfinite(norm) && clip > 0 && norm > clip) {
    const double scale = clip / (norm + 1e-6);
    for (auto& u : m.units) u.grad_shard.mul_(scale);
  }
  r.applied = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (r.applied) {
    m.optimizer->step(lr);
    m.refresh();
  }
  return r;
}

std::map<std::string, at::Tensor> ShardedStudent::shard_state() const {
  const Impl& m = *impl_;
  const std::map<std::string, at::Tensor> st = m.optimizer->state_tensors();
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < m.units.size(); ++i) {
    const std::string& name = m.layout.units[i].name;
    out["param/" + name] = m.units[i].shard.detach().cpu().contiguous();
    for (const char* kind : {"exp_avg", "exp_avg_sq", "master"}) {
      std::vector<at::Tensor> parts;
      for (const char* group : {"flat.decay/", "flat.nodecay/"}) {
        auto it = st.find(std::string(kind) + "/" + group + name);
        if (it != st.end()) parts.push_back(it->second.detach().cpu().reshape(-1));
      }
      if (!parts.empty()) out[std::string(kind) + "/" + name] = at::cat(parts).contiguous();
    }
  }
  return out;
}

void ShardedStudent::load_shard_state(
    const std::function<at::Tensor(size_t, const std::string&, int64_t, int64_t)>& get, int64_t optimizer_steps) {
  Impl& m = *impl_;
  at::NoGradGuard no_grad;
  const bool low_precision = m.opts.dtype() != at::kFloat;
  std::map<std::string, at::Tensor> state;
  for (size_t i = 0; i < m.units.size(); ++i) {
    const FlatLayout::Unit& lu = m.layout.units[i];
    Impl::Unit& u = m.units[i];
    const int64_t begin = m.shard_rank * u.L;
    u.shard.copy_(get(i, "param", begin, u.L));
    const int64_t d = std::clamp<int64_t>(lu.decay_numel - begin, 0, u.L);
    std::vector<std::string> kinds{"exp_avg", "exp_avg_sq"};
    if (low_precision) kinds.push_back("master");
    for (const std::string& kind : kinds) {
      at::Tensor t = get(i, kind, begin, u.L).to(at::kFloat);
      if (d > 0) state[kind + "/flat.decay/" + lu.name] = t.narrow(0, 0, d);
      if (u.L - d > 0) state[kind + "/flat.nodecay/" + lu.name] = t.narrow(0, d, u.L - d);
    }
  }
  m.optimizer->load_state(state, optimizer_steps);
  m.refresh();
}

std::map<std::string, at::Tensor> ShardedStudent::full_parameters_cpu() const {
  Impl& m = *impl_;
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < m.units.size(); ++i) {
    m.wait_gather(i);
    const FlatLayout::Unit& lu = m.layout.units[i];
    for (size_t e = 0; e < lu.entries.size(); ++e) {
      at::Tensor t = m.units[i].views[e].detach().to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
      for (auto& name : lu.entries[e].names) out[name] = t;
    }
    m.release(i);
  }
  return out;
}

std::map<std::string, at::Tensor> ShardedStudent::full_gradients_cpu() const {
  Impl& m = *impl_;
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < m.units.size(); ++i) {
    Impl::Unit& u = m.units[i];
    at::Tensor flat = at::empty({u.padded}, m.opts);
    if (m.shard_comm)
      m.shard_comm->backend->_allgather_base(flat, u.grad_shard)->wait();
    else
      flat.copy_(u.grad_shard);
    flat = flat.cpu();
    for (auto& e : m.layout.units[i].entries) {
      at::Tensor t = flat.narrow(0, e.offset, e.numel).view(e.shape).clone();
      for (auto& name : e.names) out[name] = t;
    }
  }
  return out;
}

}  // namespace mp::distill
