// Learning-rate schedules: linear warm-up, then cosine decay or WSD (warm-up, stable, linear decay).
#include <cmath>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {

LrSchedule lr_schedule_from_name(const std::string& name) {
  if (name == "cosine") return LrSchedule::cosine;
  if (name == "wsd") return LrSchedule::wsd;
  fail("distill: unknown learning-rate schedule \"", name, "\"; expected cosine or wsd");
}

const char* lr_schedule_name(LrSchedule schedule) { return schedule == LrSchedule::cosine ? "cosine" : "wsd"; }

double learning_rate(const ScheduleOptions& o, int64_t step) {
  MP_CHECK(o.total_steps > 0, "distill: schedule needs total_steps > 0, found ", o.total_steps);
  if (step < o.warmup_steps) return o.lr * double(step + 1) / double(o.warmup_steps);
  const int64_t last = o.total_steps - 1;
  if (o.kind == LrSchedule::cosine) {
    const int64_t span = last - o.warmup_steps;
    const double progress = span <= 0 ? 1.0 : std::min(1.0, double(step - o.warmup_steps) / double(span));
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
  }
  // WSD: the decay phase covers the last wsd_decay_fraction of all steps (at least one step).
  const int64_t decay_steps = std::max<int64_t>(1, int64_t(std::llround(o.wsd_decay_fraction * o.total_steps)));
  const int64_t decay_start = std::max(o.warmup_steps, o.total_steps - decay_steps);
  if (step < decay_start) return o.lr;
  const int64_t span = last - decay_start;
  const double progress = span <= 0 ? 1.0 : std::min(1.0, double(step - decay_start) / double(span));
  return o.lr + (o.min_lr - o.lr) * progress;
}

}  // namespace mp::distill
