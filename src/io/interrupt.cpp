#include "minipuzzle/interrupt.h"

#include <atomic>
#include <csignal>

namespace mp {

static std::atomic<int> g_signal{0};

static void on_signal(int sig) { g_signal.store(sig); }

void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool interrupted() { return g_signal.load() != 0; }
int interrupt_signal() { return g_signal.load(); }
void clear_interrupt() { g_signal.store(0); }

}  // namespace mp
