//! wgconv embedded in a "framework" that owns its device, buffers and command stream.
//!
//! The framework makes its own wgpu device, keeps every tensor of a small CNN in one arena
//! buffer of its own, and has its own WGSL kernels (a fused bias + ReLU, the loss gradient, the
//! ReLU backward and SGD). wgconv reads and writes the arena through views; each training step
//! is one command encoder: wgconv's recorded batches encoded between the framework's own
//! passes, submitted once. The weights after a few steps are checked against the same steps on
//! the CPU with wgconv's reference.
//!
//! ```text
//! WGPU_BACKEND=vulkan cargo run --release --example embed_framework
//! ```

use ndarray::{Array1, Array4, ArrayD};
use wgconv::{Conv2dSpec, Gpu, Padding2d, Tensor, reference};

/// The framework's kernels: one module, four entry points over `n` elements.
const KERNELS: &str = r#"
struct P { n: u32, c: u32, hw: u32, lr: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out = max(out + b[channel], 0), in place (out: NCHW with c channels of hw pixels).
@compute @workgroup_size(64)
fn bias_relu(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= p.n) { return; }
    out[i] = max(out[i] + b[(i / p.hw) % p.c], 0.0);
}

// out = a - b: the gradient of 0.5 * |a - b|^2.
@compute @workgroup_size(64)
fn loss_grad(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= p.n) { return; }
    out[i] = a[i] - b[i];
}

// out = a where b > 0 (the ReLU's output), else 0.
@compute @workgroup_size(64)
fn relu_backward(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= p.n) { return; }
    out[i] = select(0.0, a[i], b[i] > 0.0);
}

// out -= lr * a.
@compute @workgroup_size(64)
fn sgd(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= p.n) { return; }
    out[i] = out[i] - p.lr * a[i];
}
"#;

/// A byte range of a buffer: the framework's own handle on a tensor.
#[derive(Clone)]
struct Region {
    buffer: wgpu::Buffer,
    offset: u64,
    len: usize,
}

impl Region {
    fn of(t: &Tensor) -> Region {
        Region {
            buffer: t.buffer().expect("a non-empty tensor").clone(),
            offset: t.offset(),
            len: t.len(),
        }
    }
}

struct Framework {
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<(&'static str, wgpu::ComputePipeline)>,
}

/// A storage binding of a region.
fn bind(binding: u32, r: &Region) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &r.buffer,
            offset: r.offset,
            size: wgpu::BufferSize::new(r.len as u64 * 4),
        }),
    }
}

impl Framework {
    fn new() -> Framework {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
            .expect("a wgpu adapter (Mesa's lavapipe or llvmpipe will do)");
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("framework"),
            required_limits: wgpu::Limits::downlevel_defaults(),
            ..Default::default()
        }))
        .expect("a device");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("framework kernels"),
            source: wgpu::ShaderSource::Wgsl(KERNELS.into()),
        });
        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let storage = wgpu::BufferBindingType::Storage { read_only: false };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("framework"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Uniform),
                entry(1, storage),
                entry(2, storage),
                entry(3, storage),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("framework"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = ["bias_relu", "loss_grad", "relu_backward", "sgd"]
            .into_iter()
            .map(|name| {
                let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(name),
                    compilation_options: Default::default(),
                    cache: None,
                });
                (name, p)
            })
            .collect();
        Framework {
            device,
            queue,
            layout,
            pipelines,
        }
    }

    /// One of the framework's passes: `kernel` over `out.len` elements.
    fn pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &str,
        [a, b, out]: [&Region; 3],
        (c, hw, lr): (u32, u32, f32),
    ) {
        let params: [u32; 4] = [out.len as u32, c, hw, lr.to_bits()];
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("framework params"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue
            .write_buffer(&uniform, 0, bytemuck::cast_slice(&params));
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                bind(1, a),
                bind(2, b),
                bind(3, out),
            ],
        });
        let pipeline = &self.pipelines.iter().find(|(n, _)| *n == kernel).unwrap().1;
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups((out.len as u32).div_ceil(64), 1, 1);
    }
}

const LR: f32 = 0.05;
const STEPS: usize = 3;

fn spec() -> Conv2dSpec {
    Conv2dSpec {
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    }
}

fn random(shape: [usize; 4], seed: u64) -> Array4<f32> {
    let mut s = seed;
    Array4::from_shape_simple_fn(shape, || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
    })
}

fn main() -> wgconv::Result<()> {
    let fw = Framework::new();
    let gpu = Gpu::from_wgpu(fw.device.clone(), fw.queue.clone())?;
    let info = gpu.adapter_info();
    println!("framework device: {} ({:?})", info.name, info.backend);

    let (x, target) = (random([2, 1, 8, 8], 1), random([2, 2, 8, 8], 2));
    // The model: a 3x3 conv (1 -> 4 channels; its bias in the framework's fused bias + ReLU),
    // ReLU, a 3x3 conv (4 -> 2), the loss 0.5 |y - target|^2.
    let w1_0 = random([4, 1, 3, 3], 3);
    let b1_0 = random([1, 1, 1, 4], 4).into_shape_with_order(4).unwrap();
    let w2_0 = random([2, 4, 3, 3], 5);

    // The framework's arena: every tensor it owns, at aligned offsets.
    let align = u64::from(fw.device.limits().min_storage_buffer_offset_alignment);
    let sizes = [
        ("x", x.len()),
        ("target", target.len()),
        ("w1", 36),
        ("b1", 4),
        ("w2", 72),
        ("a1", 512),
        ("dy", 256),
        ("dz1", 512),
    ];
    let mut offsets = Vec::new();
    let mut end = 0u64;
    for (name, len) in sizes {
        offsets.push((name, end, len));
        end = (end + 4 * len as u64).div_ceil(align) * align;
    }
    let arena = fw.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("framework arena"),
        size: end,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let at = |name: &str| offsets.iter().find(|o| o.0 == name).unwrap();
    let write = |name: &str, data: &[f32]| {
        fw.queue
            .write_buffer(&arena, at(name).1, bytemuck::cast_slice(data))
    };
    write("x", x.as_slice().unwrap());
    write("target", target.as_slice().unwrap());
    write("w1", w1_0.as_slice().unwrap());
    write("b1", b1_0.as_slice().unwrap());
    write("w2", w2_0.as_slice().unwrap());
    let view =
        |name: &str, shape: &[usize]| gpu.tensor_from_buffer(arena.clone(), at(name).1, shape);
    let region = |name: &str| Region {
        buffer: arena.clone(),
        offset: at(name).1,
        len: at(name).2,
    };
    let xv = view("x", &[2, 1, 8, 8])?;
    let w1 = view("w1", &[4, 1, 3, 3])?;
    let w2 = view("w2", &[2, 4, 3, 3])?;
    let a1 = view("a1", &[2, 4, 8, 8])?;
    let dy = view("dy", &[2, 2, 8, 8])?;
    let dz1 = view("dz1", &[2, 4, 8, 8])?;
    let s = spec();

    for step in 0..STEPS {
        let mut encoder = fw.device.create_command_encoder(&Default::default());
        // wgconv: z1 = conv1(x), into the framework's a1.
        let mut rec = gpu.recorder();
        let z1 = rec.conv2d_forward(&xv, &w1, None, &s)?;
        rec.encode(&mut encoder)?;
        // Framework: a1 = relu(z1 + b1). (z1 is wgconv's tensor; the framework reads it in
        // place through its buffer and offset.)
        encoder.copy_buffer_to_buffer(
            z1.buffer().unwrap(),
            z1.offset(),
            &arena,
            at("a1").1,
            4 * 512,
        );
        fw.pass(
            &mut encoder,
            "bias_relu",
            [&region("a1"), &region("b1"), &region("a1")],
            (4, 64, 0.0),
        );
        // wgconv: y = conv2(a1).
        let mut rec = gpu.recorder();
        let y = rec.conv2d_forward(&a1, &w2, None, &s)?;
        rec.encode(&mut encoder)?;
        // Framework: dy = y - target.
        fw.pass(
            &mut encoder,
            "loss_grad",
            [&Region::of(&y), &region("target"), &region("dy")],
            (0, 0, 0.0),
        );
        // wgconv: the backward of conv2.
        let mut rec = gpu.recorder();
        let dw2 = rec.conv2d_backward_weight(&a1, &dy, [3, 3], &s)?;
        let da1 = rec.conv2d_backward_input(&dy, &w2, [8, 8], &s)?;
        rec.encode(&mut encoder)?;
        // Framework: dz1 = da1 where a1 > 0.
        fw.pass(
            &mut encoder,
            "relu_backward",
            [&Region::of(&da1), &region("a1"), &region("dz1")],
            (0, 0, 0.0),
        );
        // wgconv: the backward of conv1 (dW and the bias's gradient).
        let mut rec = gpu.recorder();
        let dw1 = rec.conv2d_backward_weight(&xv, &dz1, [3, 3], &s)?;
        let db1 = rec.conv2d_backward_bias(&dz1)?;
        rec.encode(&mut encoder)?;
        // Framework: SGD on its own parameters.
        for (g, p) in [(&dw1, "w1"), (&db1, "b1"), (&dw2, "w2")] {
            fw.pass(
                &mut encoder,
                "sgd",
                [&Region::of(g), &region(p), &region(p)],
                (0, 0, LR),
            );
        }
        fw.queue.submit([encoder.finish()]);
        let loss: f32 = gpu.download(&dy)?.iter().map(|v| 0.5 * v * v).sum();
        println!("step {step}: loss {loss:.6}");
    }

    // The same steps on the CPU, in f64, with wgconv's reference.
    let f = |a: &Array4<f32>| a.mapv(f64::from);
    let (x64, t64) = (f(&x), f(&target));
    let (mut w1_64, mut b1_64, mut w2_64) = (f(&w1_0), b1_0.mapv(f64::from), f(&w2_0));
    for _ in 0..STEPS {
        let z1 = reference::conv2d_forward(x64.view(), w1_64.view(), Some(b1_64.view()), &s)?;
        let a1 = z1.mapv(|v| v.max(0.0));
        let y = reference::conv2d_forward(a1.view(), w2_64.view(), None, &s)?;
        let dy = &y - &t64;
        let dw2 = reference::conv2d_backward_weight(a1.view(), dy.view(), [3, 3], &s)?;
        let da1 = reference::conv2d_backward_input(dy.view(), w2_64.view(), [8, 8], &s)?;
        let dz1 = ndarray::Zip::from(&da1)
            .and(&a1)
            .map_collect(|&g, &a| if a > 0.0 { g } else { 0.0 });
        let dw1 = reference::conv2d_backward_weight(x64.view(), dz1.view(), [3, 3], &s)?;
        let db1: Array1<f64> = reference::conv2d_backward_bias(dz1.view());
        w1_64 = &w1_64 - &(dw1 * f64::from(LR));
        b1_64 = &b1_64 - &(db1 * f64::from(LR));
        w2_64 = &w2_64 - &(dw2 * f64::from(LR));
    }
    let got = |t: &Tensor| -> wgconv::Result<ArrayD<f64>> { Ok(gpu.download(t)?.mapv(f64::from)) };
    let b1v = view("b1", &[4])?;
    let mut worst = 0.0f64;
    for (name, g, want) in [
        ("w1", got(&w1)?, w1_64.into_dyn()),
        ("b1", got(&b1v)?, b1_64.into_dyn()),
        ("w2", got(&w2)?, w2_64.into_dyn()),
    ] {
        let scale = want.iter().fold(1.0f64, |s, v| s.max(v.abs()));
        let err = g
            .iter()
            .zip(want.iter())
            .fold(0.0f64, |e, (a, b)| e.max((a - b).abs()))
            / scale;
        println!("{name}: max relative error against the reference {err:.2e}");
        worst = worst.max(err);
    }
    if worst > 1e-4 {
        return Err(wgconv::Error::CheckFailed {
            op: "embed_framework".into(),
            detail: format!("weights differ from the reference by {worst:e}"),
        });
    }
    println!(
        "ok: {STEPS} steps match the reference (wgconv and the framework shared one encoder per step)"
    );
    Ok(())
}
