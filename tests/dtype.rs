//! 16-bit tensors (`DType::F16`, `DType::BF16`): storage, `upload_as`, `download`, views of the
//! caller's 16-bit data and `Gpu::cast`, against the host's conversions (the `half` crate):
//! every one of the 65,536 bit patterns of each format, the rounding midpoints of every finite
//! value and their neighbours, ties, overflow at 65520, subnormals, NaN payloads; windows past
//! a binding; a device without optional features; 2 bytes an element; SGD refusing a 16-bit
//! parameter by name.

mod common;

use common::{bits, caller_buffer, caller_device, fresh, gpu};
use ndarray::Array1;
use wgconv::{DType, Error, Gpu, Tensor};

const SIXTEEN: [DType; 2] = [DType::F16, DType::BF16];

/// A view of the caller's buffer holding `patterns` as 16-bit elements of `dtype` (the
/// buffer's usage has no more than a framework's activations need).
fn view_of(gpu: &Gpu, patterns: &[u16], dtype: DType) -> Tensor {
    let bytes: Vec<u8> = patterns
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .chain([0, 0].into_iter().take(2 * (patterns.len() % 2)))
        .collect();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = caller_buffer(gpu.device(), bytes.len() as u64, usage);
    gpu.queue().write_buffer(&buffer, 0, &bytes);
    gpu.tensor_from_buffer_as(buffer, 0, &[patterns.len()], dtype)
        .unwrap()
}

/// The host's widening of a pattern, as f32 bits.
fn widened(dtype: DType, b: u16) -> u32 {
    dtype.from_bits16(b).to_bits()
}

/// Every bit pattern of each format: downloads and casts to f32 widen it exactly as the host
/// does, and casts between the two 16-bit formats round as the host does; twice, same bits.
#[test]
fn every_16_bit_pattern_widens_and_converts_as_the_host() {
    let gpu = gpu();
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for dt in SIXTEEN {
        let view = view_of(gpu, &all, dt);
        let want: Vec<u32> = all.iter().map(|&b| widened(dt, b)).collect();
        assert_eq!(bits(gpu, &view), want, "{dt}: download");
        let f32s = gpu.cast(&view, DType::F32).unwrap();
        assert_eq!(f32s.dtype(), DType::F32);
        assert_eq!(bits(gpu, &f32s), want, "{dt}: cast to f32");
        let other = if dt == DType::F16 {
            DType::BF16
        } else {
            DType::F16
        };
        let want: Vec<u32> = all
            .iter()
            .map(|&b| other.round(dt.from_bits16(b)).to_bits())
            .collect();
        let first = bits(gpu, &gpu.cast(&view, other).unwrap());
        assert_eq!(first, want, "{dt} -> {other}");
        assert_eq!(
            bits(gpu, &gpu.cast(&view, other).unwrap()),
            first,
            "{dt} -> {other} again"
        );
        // To its own dtype: a copy of every pattern (signalling NaNs included), read back raw.
        let copy = gpu.cast(&view, dt).unwrap();
        let (buffer, offset) = copy.into_buffer().unwrap();
        let raw = gpu
            .tensor_from_buffer(buffer, offset, &[all.len() / 2])
            .unwrap();
        let words: Vec<u32> = all
            .chunks(2)
            .map(|p| u32::from(p[0]) | (u32::from(p[1]) << 16))
            .collect();
        assert_eq!(
            bits(gpu, &raw),
            words,
            "{dt}: a cast to its own dtype copies the bits"
        );
    }
}

/// f32 values on both sides of every rounding boundary of each format (each midpoint between
/// two neighbouring finite values, exact in f32, and the f32 values next to it), both signs,
/// and f32 patterns spread over the whole range (NaN payloads, subnormals, infinities): the
/// GPU's cast and `upload_as` give the host's bits.
#[test]
fn f32_rounds_to_16_bits_as_the_host() {
    let gpu = gpu();
    for dt in SIXTEEN {
        let top = match dt {
            DType::F16 => 0x7bffu16,
            _ => 0x7f7f,
        };
        let mut values = Vec::new();
        for h in 0..top {
            let (lo, hi) = (dt.from_bits16(h) as f64, dt.from_bits16(h + 1) as f64);
            let mid = ((lo + hi) / 2.0) as f32;
            assert_eq!(mid as f64, (lo + hi) / 2.0, "{dt}: midpoint exact");
            for v in [
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ] {
                values.push(v);
                values.push(-v);
            }
        }
        // The first value that rounds past the largest finite one, and its neighbour below.
        let limit = match dt {
            DType::F16 => 65520.0f32,
            _ => (2.0 - 2f32.powi(-8)) * 2f32.powi(127),
        };
        values.extend([limit, f32::from_bits(limit.to_bits() - 1), -limit]);
        values.extend((0..=u32::MAX).step_by(65_521).map(f32::from_bits));
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
        values
            .extend([0x7f80_0001u32, 0xffc1_2345, 0x7fbf_ffff, 1, 0x8000_0001].map(f32::from_bits));
        let host: Vec<u32> = values.iter().map(|&v| dt.round(v).to_bits()).collect();
        let x = gpu.upload(&Array1::from(values.clone())).unwrap();
        let cast = gpu.cast(&x, dt).unwrap();
        assert_eq!(cast.dtype(), dt);
        let got = bits(gpu, &cast);
        for (i, (g, h)) in got.iter().zip(&host).enumerate() {
            assert_eq!(
                g,
                h,
                "{dt}: {:e} ({:#010x}) cast to {:#010x}, host {:#010x}",
                values[i],
                values[i].to_bits(),
                g,
                h
            );
        }
        let uploaded = gpu.upload_as(&Array1::from(values.clone()), dt).unwrap();
        assert_eq!(bits(gpu, &uploaded), host, "{dt}: upload_as");
        eprintln!(
            "{dt}: {} values rounded as the host rounds them",
            values.len()
        );
    }
    // The named cases.
    let f16 = |v: f32| DType::F16.round(v);
    assert_eq!(f16(65519.99), 65504.0);
    assert_eq!(f16(65520.0), f32::INFINITY);
    assert_eq!(
        f16(2f32.powi(-24)),
        2f32.powi(-24),
        "the least subnormal is kept"
    );
    assert_eq!(f16(2f32.powi(-25)), 0.0, "half of it ties to even: 0");
    assert_eq!(
        f16(1.0 + 2f32.powi(-11)),
        1.0,
        "a tie goes to the even neighbour"
    );
}

/// Windows past a binding: a 16-bit tensor of 10,001 elements (20 KB) cast at a 4 KiB binding,
/// in both directions, equals the host's conversion.
#[test]
fn casts_past_a_binding_split_by_words() {
    let gpu = fresh(Gpu::builder().max_binding_bytes(4096));
    let n = 10_001;
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
    let x = gpu.upload(&Array1::from(values.clone())).unwrap();
    for dt in SIXTEEN {
        let h = gpu.cast(&x, dt).unwrap();
        let want: Vec<u32> = values.iter().map(|&v| dt.round(v).to_bits()).collect();
        assert_eq!(bits(&gpu, &h), want, "{dt}");
        assert_eq!(
            bits(&gpu, &gpu.cast(&h, DType::F32).unwrap()),
            want,
            "{dt} back"
        );
    }
}

/// A framework's device without optional features (no SHADER_F16): views of its 16-bit
/// buffers download and cast, and a view needs `offset + 4 ceil(n / 2)` bytes.
#[test]
fn sixteen_bit_views_on_a_device_without_features() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    assert!(!device.features().contains(wgpu::Features::SHADER_F16));
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone()).unwrap();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = caller_buffer(&device, 256 + 8, usage);
    // bf16 1.0, -2.5, 3.0 at byte 256, then a half-word that is not the view's.
    let words: [u16; 4] = [0x3f80, 0xc020, 0x4040, 0xabcd];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    queue.write_buffer(&buffer, 256, &bytes);
    let x = gpu
        .tensor_from_buffer_as(buffer.clone(), 256, &[3], DType::BF16)
        .unwrap();
    assert_eq!(x.dtype(), DType::BF16);
    assert_eq!(
        gpu.download(&x).unwrap().as_slice().unwrap(),
        &[1.0, -2.5, 3.0]
    );
    let h = gpu.cast(&x, DType::F16).unwrap();
    assert_eq!(
        gpu.download(&h).unwrap().as_slice().unwrap(),
        &[1.0, -2.5, 3.0]
    );
    assert!(
        gpu.tensor_from_buffer_as(buffer.clone(), 256, &[4], DType::F16)
            .is_ok()
    );
    let e = gpu
        .tensor_from_buffer_as(buffer, 256, &[5], DType::F16)
        .unwrap_err();
    assert!(
        e.to_string().contains("5 f16 elements") && e.to_string().contains("264 bytes"),
        "{e}"
    );
}

/// A 16-bit tensor takes 2 bytes an element in GPU memory: half the f32 tensor's buffer.
#[test]
fn sixteen_bit_tensors_take_two_bytes_an_element() {
    let gpu = fresh(Gpu::builder());
    let a = Array1::<f32>::ones(1000);
    let size = |t: &Tensor| t.buffer().unwrap().size();
    let f = gpu.upload(&a).unwrap();
    for dt in SIXTEEN {
        let h = gpu.upload_as(&a, dt).unwrap();
        assert!(
            size(&h) >= 2000 && size(&h) * 2 <= size(&f),
            "{dt}: {} vs {}",
            size(&h),
            size(&f)
        );
        let c = gpu.cast(&f, dt).unwrap();
        assert_eq!(size(&c), size(&h), "{dt}: cast");
    }
    assert_eq!(
        format!("{} {} {}", DType::F32, DType::F16, DType::BF16),
        "f32 f16 bf16"
    );
}

/// SGD updates f32 master weights only: a 16-bit parameter or gradient is refused by name
/// (never read as f32). (The other `nn` ops take 16-bit tensors: `tests/nn_mixed.rs`.)
#[test]
fn sgd_names_a_16_bit_parameter() {
    let gpu = gpu();
    let opts = wgconv::nn::SgdOptions {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    for dt in SIXTEEN {
        let mut p16 = gpu.upload_as(&Array1::<f32>::ones(4), dt).unwrap();
        let g = gpu.upload(&Array1::<f32>::ones(4)).unwrap();
        let e = gpu.sgd_step(&mut p16, &g, &mut None, &opts).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(_)) && e.to_string().contains(&dt.to_string()),
            "{e}"
        );
        let mut p = gpu.upload(&Array1::<f32>::ones(4)).unwrap();
        let g16 = gpu.cast(&g, dt).unwrap();
        let e = gpu.sgd_step(&mut p, &g16, &mut None, &opts).unwrap_err();
        assert!(e.to_string().contains(&dt.to_string()), "{e}");
    }
}
