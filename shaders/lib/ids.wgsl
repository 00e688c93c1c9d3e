// The work item of a one-workgroup-per-item kernel: the workgroup's linear index in a grid the
// host may fold into 2-D (more than max_compute_workgroups_per_dimension workgroups); the
// kernels skip items past their work (the host rounds the grid up).
fn workgroup_item(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
