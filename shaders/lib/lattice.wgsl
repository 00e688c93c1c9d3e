// The reduction lattice of the implicit-GEMM kernels: a reduction index r = (q, t, s), s
// fastest, over `rows` x `cols` kernel taps per channel q. Walked with compares and selects
// instead of divisions (the cheapest per element on CPU drivers, where every memory access is a
// loop over the SIMD lanes); no table is read.

// A position on the lattice: tap row t, tap column s, and the offset q * per_ch of channel q.
struct Walk { t: u32, s: u32, ch: u32 }

fn walk_start(r: u32, per_ch: u32, rows: u32, cols: u32) -> Walk {
    // A dx phase without taps (reduce = 0) has an empty lattice: nothing is read, but the
    // divisions must not be by zero.
    let c = max(cols, 1u);
    let taps = max(rows, 1u) * c;
    return Walk((r % taps) / c, r % c, (r / taps) * per_ch);
}

// Moves the walk `by` indices on, without a division or a branch.
fn walk_on(w: ptr<function, Walk>, by: u32, per_ch: u32, rows: u32, cols: u32) {
    for (var k = 0u; k < by; k++) {
        let wrap_s = (*w).s + 1u == cols;
        (*w).s = select((*w).s + 1u, 0u, wrap_s);
        let t = (*w).t + u32(wrap_s);
        let wrap_t = t == rows;
        (*w).t = select(t, 0u, wrap_t);
        (*w).ch += select(0u, per_ch, wrap_t);
    }
}
