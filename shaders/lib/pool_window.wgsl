// Output windows o whose span [o*s - pad, o*s - pad + (k-1)*dil] contains input position i:
// o in [ceil((i + pad - (k-1)*dil) / s), floor((i + pad) / s)], clipped to [0, out). Returned
// as the half-open range (lo, hi), empty when lo = hi.
fn window_range(i: u32, pad: u32, k: u32, dil: u32, s: u32, out: u32) -> vec2<u32> {
    let reach = (k - 1u) * dil;
    let hi = min((i + pad) / s + 1u, out);
    var lo = 0u;
    if (i + pad > reach) {
        lo = (i + pad - reach + s - 1u) / s;
    }
    return vec2<u32>(lo, max(lo, hi));
}
