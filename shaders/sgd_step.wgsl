// SGD with momentum and weight decay, PyTorch's rule, updating the parameter in place:
//   g = grad * grad_scale                (1 / the loss scale; skipped at 1.0)
//   g = g + weight_decay * p             (when weight_decay != 0)
//   buf = g (first step) or momentum * buf + g; g = buf   (when momentum != 0)
//   p = p - lr * g
// One invocation per element.

// #include lib/per_element.wgsl

struct Params {
    total: u32, p_off: u32, g_off: u32, buf_off: u32,
    lr: f32, momentum: f32, weight_decay: f32, first_step: u32,
    has_momentum: u32, grad_scale: f32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;

fn element(i: u32) {
    if (i >= p.total) {
        return;
    }
    let value = param[p.p_off + i];
    var g = grad[p.g_off + i];
    if (p.grad_scale != 1.0) {
        g *= p.grad_scale;
    }
    if (p.weight_decay != 0.0) {
        g += p.weight_decay * value;
    }
    if (p.has_momentum != 0u) {
        if (p.first_step == 0u) {
            g = p.momentum * buf[p.buf_off + i] + g;
        }
        buf[p.buf_off + i] = g;
    }
    param[p.p_off + i] = value - p.lr * g;
}
