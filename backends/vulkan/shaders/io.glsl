// The batch's words (binding 5 of every shader), written by the host
// before each submit: d[0] the batch's first position, then its token ids.
// Ops push positions relative to d[0], so a recorded generation step
// replays at any position (backends/vulkan/record.c).
layout(std430, set = 0, binding = 5) readonly buffer B_io { uint d[]; } io;

// The absolute position of one pushed relative to the batch's first (the
// sum wraps as the host's subtraction did).
uint batch_pos(uint rel) { return rel + io.d[0]; }
