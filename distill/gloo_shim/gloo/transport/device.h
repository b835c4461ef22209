// Stand-in for gloo/transport/device.h (see ../../README.md): only held through smart pointers.
#pragma once
namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
