// Placeholder so the CUDA kernel library is never empty.
