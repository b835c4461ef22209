// minipuzzle distill --teacher T --student S --data TRAIN --valid VALID --tokens N [...] -o OUT
// minipuzzle distill --from-scratch --student CONFIG --data TRAIN --valid VALID --tokens N [...] -o OUT
// Exit codes: 0 done, 1 error, 3 stopped after --max-nonfinite non-finite steps in a row (checkpoint written),
// 130 SIGINT/SIGTERM (current step finished, checkpoint written; continue with --resume).
#include "minipuzzle/distill.h"
#include "minipuzzle/interrupt.h"
#include "src/cli/command.h"
#include "src/cli/common.h"

namespace mp::cli {
namespace {

struct DistillArgs {
  distill::DistillOptions o;
  std::string schedule = "cosine";
};

void add(CLI::App& app) {
  auto a = std::make_shared<DistillArgs>();
  auto& o = a->o;
  CLI::App* c = app.add_subcommand(
      "distill",
      "Train a student on a teacher's logits (alpha x KD + (1 - alpha) x CE), or from scratch, resumably. "
      "Data parallel under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Exit codes: 0 done, "
      "3 too many non-finite steps, 130 interrupted (checkpoint written; continue with --resume).");
  c->add_option("--teacher", o.teacher, "teacher checkpoint directory (frozen)");
  c->add_option("--student", o.student, "student checkpoint directory; with --from-scratch a config.json")->required();
  c->add_option("--teacher-logits", o.teacher_logits, "instead of --teacher: top-k teacher logits stored by "
                "`minipuzzle teacher-logits` from --data at this --seq-len (docs/TEACHER_LOGITS.md)");
  c->add_option("--teacher-logits-valid", o.teacher_logits_valid, "with --teacher-logits: a store made from --valid, "
                "for val_kl (omitted without it)");
  c->add_flag("--from-scratch", o.from_scratch, "no teacher: random-initialised student, cross-entropy only");
  c->add_option("--data", o.train_data, "training data: token file (minipuzzle data), Megatron PREFIX, .npy, UTF-8 "
                "text or a blend \"W1 SRC1 W2 SRC2 ...\"")->required();
  c->add_option("--valid", o.valid_data, "validation data (same kinds)")->required();
  c->add_option("--data-format", o.data_format, "auto | tokens | megatron | npy | text | u16 | u32 | u64 | i32 | i64 "
                "(raw little-endian ids are read only when named)")->capture_default_str();
  c->add_option("--tokenizer", o.tokenizer, "tokenizer.json for text data (default: the teacher's, else the student's, "
                "else bytes)");
  c->add_option("--tokens", o.tokens, "training tokens (over all ranks)")->required();
  c->add_option("-o,--out", o.out_dir, "output directory: log.jsonl, checkpoint/, final/, report")->required();
  c->add_option("--seq-len", o.seq_len, "tokens per sequence")->capture_default_str();
  c->add_option("--micro-batch", o.micro_batch, "sequences per forward, per rank")->capture_default_str();
  c->add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")->capture_default_str();
  c->add_option("--lr", o.schedule.lr, "peak learning rate")->capture_default_str();
  c->add_option("--min-lr", o.schedule.min_lr, "final learning rate")->capture_default_str();
  c->add_option("--warmup", o.schedule.warmup_steps, "linear warm-up steps")->capture_default_str();
  c->add_option("--schedule", a->schedule, "cosine | wsd")->capture_default_str();
  c->add_option("--wsd-decay", o.schedule.wsd_decay_fraction, "WSD: fraction of steps that decay")->capture_default_str();
  c->add_option("--weight-decay", o.adamw.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  c->add_option("--beta1", o.adamw.beta1, "AdamW beta1")->capture_default_str();
  c->add_option("--beta2", o.adamw.beta2, "AdamW beta2")->capture_default_str();
  c->add_option("--clip", o.clip, "max global gradient norm (0: off)")->capture_default_str();
  c->add_option("--alpha", o.alpha, "weight of the KD term; 1 - alpha weighs cross-entropy")->capture_default_str();
  c->add_option("--temperature", o.temperature, "KD temperature")->capture_default_str();
  c->add_option("--eval-every", o.eval_every, "steps between evaluations")->capture_default_str();
  c->add_option("--eval-tokens", o.eval_tokens, "validation tokens per evaluation")->capture_default_str();
  c->add_option("--save-every", o.save_every, "steps between checkpoints (0: only at the end)")->capture_default_str();
  c->add_option("--seed", o.seed, "seed of the data order and of --from-scratch initialisation")->capture_default_str();
  c->add_option("--device", o.device, "cpu | cuda | cuda:N (cuda: bf16 with fp32 master weights; several ranks take GPU LOCAL_RANK each)")->capture_default_str();
  add_kernel_options(c);
  c->add_option("--threads", o.threads, "CPU threads (0: default); fix it for bit-exact resume")->capture_default_str();
  c->add_option("--max-nonfinite", o.max_nonfinite, "stop after this many non-finite steps in a row")->capture_default_str();
  c->add_option("--save-dtype", o.save_dtype, "dtype of OUT/final: float32 | bfloat16 (default: the student's)");
  c->add_flag("--no-fused-lm-head", [&o](int64_t) { o.fused_lm_head = false; },
              "CUDA: materialise full logits (kd_loss) instead of the fused lm_head + KD (linear_kd)");
  c->add_flag("--activation-checkpointing", o.activation_checkpointing,
              "keep only each student layer's input during forward and recompute the layer in backward: less "
              "activation memory for about one more student forward per step; same losses and gradients");
  c->add_option("--checkpoint-layers", o.checkpoint_layers,
                "with --activation-checkpointing: layers per recomputed segment (more: less memory kept, larger "
                "recompute peak)")
      ->capture_default_str();
  c->add_option("--shard", o.shard,
                "none: data parallel with replicated state; zero3: each rank holds 1/N of the student's parameters, "
                "gradients, fp32 masters and AdamW moments, layers all-gathered for forward and backward; zero2: "
                "only gradients and optimizer state sharded. Sharded checkpoints reshard to another world size")
      ->capture_default_str();
  c->add_option("--shard-group-size", o.shard_group_size,
                "with --shard: ranks per shard group (e.g. GPUs per node); the groups replicate each other "
                "(hybrid sharding). 0: the whole world")
      ->capture_default_str();
  c->add_option("--plan-world-size", o.plan_world_size,
                "with --plan: plan per GPU for this many ranks (default: WORLD_SIZE)");
  c->add_flag("--shard-teacher", o.shard_teacher,
              "with --plan: plan the teacher's layers sharded like the student's (not yet implemented in training)");
  c->add_flag("--resume", o.resume, "continue from OUT/checkpoint");
  c->add_option("--elastic", o.elastic, "budgets file or inline JSON (configs/elastic/*.json): train these nested "
                "budgets of a nested student (`minipuzzle nest`) together, one teacher pass per batch");
  c->add_flag("--plan", o.plan_only,
              "print the memory plan (GPU and host bytes per term, the chosen micro-batch, checkpointing and offload), "
              "write OUT/plan.json and exit without training (exit 1 with one line when nothing fits)");
  c->add_option("--fit", o.fit,
                "check: refuse a setup that does not fit the GPU/host (saying what would); auto: choose micro-batch "
                "(at most --micro-batch, same tokens per step), activation checkpointing and optimizer offload; off")
      ->capture_default_str();
  c->add_option("--gpu-memory", o.gpu_memory,
                "free GPU memory to plan for, e.g. 141GB or 80GiB (default: what the GPU reports free); on a CPU run "
                "the plan is made as the CUDA trainer would hold the models");
  c->add_option("--stop-after-steps", o.stop_after_steps,
                "stop after this step with a checkpoint (exit 0); --resume continues the same run");
  c->add_option("--router-bias-update", o.router_bias_update,
                "MoE students: aux-loss-free load balancing after every step, each router's e_score_correction_bias "
                "+= RATE * sign(mean load - load) (DeepSeek-V3; Nemotron 3 Nano trained with 1e-3); default 0: off");
  c->add_flag("--no-save", o.no_save,
              "write neither OUT/checkpoint nor OUT/final (benchmarks whose optimizer state exceeds the disk)");
  c->add_option("--host-memory", o.host_memory, "host RAM to plan for (default: MemAvailable)");
  c->add_option("--offload-optimizer", o.offload_optimizer,
                "auto or a fraction in [0, 1]: the share of the fp32 master weights and AdamW moments kept and updated "
                "in host memory (gradients and weights stream over PCIe); same results as on the GPU");
  c->callback([a] {
    a->o.schedule.kind = distill::lr_schedule_from_name(a->schedule);
    distill::DistillResult r = distill::run_distillation(a->o);
    set_exit_code(r.exit_code);
  });
}

MP_REGISTER_COMMAND(distill, add);

}  // namespace
}  // namespace mp::cli
