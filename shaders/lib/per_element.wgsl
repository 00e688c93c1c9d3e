// The entry point of the one-invocation-per-element kernels, which define
// `fn element(idx: u32)` and skip ids past their work. WG invocations per workgroup (the host's
// 64, as an override); a grid past max_compute_workgroups_per_dimension is folded into 2-D and
// the linear id rebuilt here (the host rounds the grid up).
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    element((wid.x + wid.y * nwg.x) * WG + lid);
}
