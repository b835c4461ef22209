// Cooperative Ctrl-C / SIGTERM: the handler only sets a flag; long loops poll it at safe points (between
// steps, between tensors) so they can save a checkpoint or remove temporary output before exiting.
#pragma once

namespace mp {

void install_interrupt_handlers();  // SIGINT and SIGTERM
bool interrupted();
int interrupt_signal();        // the signal received, 0 if none
void clear_interrupt();        // for tests
// Exit code used when a job stops because of a signal after saving its state (documented in README).
constexpr int kExitInterrupted = 130;

}  // namespace mp
