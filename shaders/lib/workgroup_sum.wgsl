// A fixed-order tree sum over the workgroup (WG a power of two, declared by the kernel): the
// same order on every run, so the split reductions are deterministic without atomics. Called
// in uniform control flow; the result is sums[0], valid in every invocation until the next
// call writes `sums` (a caller that calls again must put a barrier between).
var<workgroup> sums: array<f32, WG>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
    sums[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sums[lid] += sums[lid + s];
        }
        workgroupBarrier();
    }
    return sums[0];
}
