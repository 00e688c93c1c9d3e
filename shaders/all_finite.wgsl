// The overflow check of mixed-precision training (nn::GradScaler): flag[0] becomes 1 where an
// element of the window is +-inf or NaN. The flag is only ever set here (the host zeroes it
// first), so the result does not depend on the order of the invocations.

// #include lib/per_element.wgsl
// #include lib/elt_params.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> flag: array<atomic<u32>>;

fn element(i: u32) {
    if (i >= p.total) {
        return;
    }
    // Exponent all ones: an infinity or a NaN (a bit test, which fast-math cannot drop).
    if ((bitcast<u32>(x[p.a_off + i]) & 0x7f800000u) == 0x7f800000u) {
        atomicOr(&flag[0], 1u);
    }
}
