//! Every shader in `shaders/`, joined with the `shaders/lib/` pieces it includes, is valid WGSL,
//! translates to SPIR-V, MSL, HLSL and GLSL with naga (no GPU needed), its `Params` struct
//! matches the Rust params block byte for byte, and its bindings match its kernel table row.

use std::path::Path;

use naga::back;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use wgconv::gpu::kernels::{Access, Kernel, TABLE, Tile, source};

fn validate(module: &naga::Module) -> naga::valid::ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(module)
        .unwrap_or_else(|e| panic!("validation: {e:?}"))
}

fn translate_all(name: &str, source: &str, constants: &[(&str, f64)]) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = validate(&module);
    // Resolve `override` constants as a pipeline would (the backends need concrete values).
    let constants: back::PipelineConstants =
        constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let (module, info) = back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{name}: overrides: {e:?}"));
    let (module, info) = (module.into_owned(), info.into_owned());

    let spv = back::spv::write_vec(&module, &info, &back::spv::Options::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e:?}"));
    assert!(spv.len() > 10, "{name}: SPIR-V");

    let msl_pipeline = back::msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
        ..Default::default()
    };
    let (msl, _) = back::msl::write_string(
        &module,
        &info,
        &back::msl::Options::default(),
        &msl_pipeline,
    )
    .unwrap_or_else(|e| panic!("{name}: MSL: {e:?}"));
    assert!(msl.contains("kernel"), "{name}: MSL");

    let mut hlsl = String::new();
    let hlsl_options = back::hlsl::Options::default();
    let hlsl_pipeline = back::hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
    };
    back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{name}: HLSL: {e:?}"));
    assert!(hlsl.contains("numthreads"), "{name}: HLSL");

    let mut glsl = String::new();
    let glsl_options = back::glsl::Options {
        version: back::glsl::Version::Embedded {
            version: 310,
            is_webgl: false,
        },
        ..Default::default()
    };
    let glsl_pipeline = back::glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
        multiview: None,
    };
    back::glsl::Writer::new(
        &mut glsl,
        &module,
        &info,
        &glsl_options,
        &glsl_pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{name}: GLSL: {e:?}"));
    assert!(glsl.contains("local_size_x"), "{name}: GLSL");
}

#[test]
fn every_shader_validates_and_translates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let file = std::fs::read_to_string(&path).unwrap();
            // The overrides' own defaults.
            translate_all(&path.display().to_string(), &source::assemble(&file), &[]);
            count += 1;
        }
    }
    assert_eq!(count, TABLE.len(), "one shader file per kernel table row");
}

/// Every kernel the library loads is its shader file, byte for byte, joined with the library
/// pieces it includes, and translates with the override values the library gives it, for every
/// tile it can pick.
#[test]
fn kernels_load_the_shader_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for k in Kernel::ALL {
        let file = std::fs::read_to_string(dir.join(format!("{}.wgsl", k.name()))).unwrap();
        assert_eq!(file, k.def().file, "{}", k.name());
        assert_eq!(source::assemble(&file), k.source(), "{}", k.name());
        translate_all(k.name(), k.source(), &k.constants());
        // The variant for a dispatch that binds one buffer as input and output.
        let aliased = wgconv::gpu::kernels::aliased_source(k.source());
        translate_all(&format!("{} (aliased)", k.name()), &aliased, &k.constants());
    }
    for tile in Tile::CANDIDATES {
        assert!(tile.is_valid(), "{tile:?}");
        for k in Kernel::tiled(tile) {
            translate_all(
                &format!("{} {tile:?}", k.name()),
                k.source(),
                &k.constants(),
            );
        }
    }
}

/// Every include line of every kernel names a library piece, the library pieces are the files
/// under `shaders/lib/`, and each is used by some kernel.
#[test]
fn includes_resolve_to_the_library() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/lib");
    for (path, text) in source::LIBRARY {
        let file = std::fs::read_to_string(dir.join(path.trim_start_matches("lib/"))).unwrap();
        assert_eq!(file, text, "{path}");
        assert!(
            TABLE
                .iter()
                .any(|row| source::includes(row.file).any(|p| p == path)),
            "{path} is included by no kernel"
        );
    }
    // Besides the library, the two other storage pieces that replace lib/elem.wgsl
    // (kernels/storage.rs, whose tests validate every kernel with each).
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        source::LIBRARY.len() + 2
    );
    for piece in ["elem_packed.wgsl", "elem_f16.wgsl"] {
        assert!(dir.join(piece).exists(), "{piece}");
    }
    for row in &TABLE {
        for path in source::includes(row.file) {
            assert!(
                source::library(path).is_some(),
                "{}: unknown include {path}",
                row.name
            );
        }
    }
}

/// Each kernel's bindings, as naga reads its WGSL, are the table row's: the params block as
/// uniform 0 (a `Params` struct), then its storage bindings in order with their access, and
/// nothing else.
#[test]
fn bindings_are_pinned() {
    for k in Kernel::ALL {
        let module = naga::front::wgsl::parse_str(k.source()).unwrap();
        let mut found: Vec<(u32, String)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| {
                let b = v.binding.as_ref()?;
                assert_eq!(b.group, 0, "{}: group", k.name());
                let what = match v.space {
                    naga::AddressSpace::Uniform => {
                        let ty = &module.types[v.ty];
                        format!("uniform {}", ty.name.clone().unwrap_or_default())
                    }
                    naga::AddressSpace::Storage { access } => {
                        if access.contains(naga::StorageAccess::STORE) {
                            "read_write".to_string()
                        } else {
                            "read".to_string()
                        }
                    }
                    ref other => format!("{other:?}"),
                };
                Some((b.binding, what))
            })
            .collect();
        found.sort();
        let mut want = vec![(0, "uniform Params".to_string())];
        for (i, a) in k.def().bindings.iter().enumerate() {
            let access = match a {
                Access::Read => "read",
                Access::ReadWrite => "read_write",
            };
            want.push((i as u32 + 1, access.to_string()));
        }
        assert_eq!(found, want, "{}: bindings", k.name());
    }
}

/// The WGSL `Params` struct of each kernel has the Rust params block's fields at the same
/// offsets, and the same size.
#[test]
fn params_layout_is_pinned() {
    for k in Kernel::ALL {
        let module = naga::front::wgsl::parse_str(k.source()).unwrap();
        let (fields, size) = k.params_layout();
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
                (Some(n), naga::TypeInner::Struct { members, span }) if n == "Params" => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} has no Params struct", k.name()));
        let wgsl: Vec<(String, usize)> = members
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
            .collect();
        let rust: Vec<(String, usize)> = fields.iter().map(|&(n, o)| (n.to_string(), o)).collect();
        assert_eq!(wgsl, rust, "{}: Params fields", k.name());
        assert_eq!(span as usize, size, "{}: Params size", k.name());
        assert_eq!(
            size % 16,
            0,
            "{}: uniform size must be a multiple of 16",
            k.name()
        );
    }
}

/// The constants the host sizes the depthwise kernels' dispatches by are the shaders' own: the
/// strip (`const VW`) and the taps per workgroup of dW (`const TAPS`).
#[test]
fn depthwise_constants_are_pinned() {
    use wgconv::gpu::kernels::{DEPTHWISE_STRIP, DEPTHWISE_TAPS};
    for (k, name, host) in [
        (Kernel::Conv2dDepthwise, "VW", DEPTHWISE_STRIP),
        (Kernel::Conv2dDepthwiseBackwardInput, "VW", DEPTHWISE_STRIP),
        (
            Kernel::Conv2dDepthwiseBackwardWeight,
            "TAPS",
            DEPTHWISE_TAPS,
        ),
    ] {
        let module = naga::front::wgsl::parse_str(k.source()).unwrap();
        let (_, c) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{} declares const {name}", k.name()));
        let value = match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v as usize,
            ref e => panic!("{}: {name} is not a u32 literal: {e:?}", k.name()),
        };
        assert_eq!(value, host, "{}: {name}", k.name());
    }
}

/// Where a function indexes an array in function memory (a local `var`, a pointer argument to
/// one, or an array value) with an index computed at run time: naga's `Access`, where a
/// constant index is `AccessIndex`. Such an array cannot live in registers unless the compiler
/// unrolls the loop around the access, which Metal, RADV/ACO and ANV are not obliged to do (and
/// lavapipe does not): the whole array goes to scratch memory. Returns `function: array` names.
fn dynamic_register_indexing(source: &str) -> Vec<String> {
    let module = naga::front::wgsl::parse_str(source).unwrap();
    let info = validate(&module);
    let mut found = Vec::new();
    let functions = module.functions.iter().map(|(h, f)| (f, &info[h])).chain(
        module
            .entry_points
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.function, info.get_entry_point(i))),
    );
    for (f, finfo) in functions {
        for (_, e) in f.expressions.iter() {
            let naga::Expression::Access { base, .. } = *e else {
                continue;
            };
            let is_register_array = match finfo[base].ty.inner_with(&module.types) {
                naga::TypeInner::Pointer { base: t, space } => {
                    matches!(
                        space,
                        naga::AddressSpace::Function | naga::AddressSpace::Private
                    ) && matches!(module.types[*t].inner, naga::TypeInner::Array { .. })
                }
                naga::TypeInner::Array { .. } => true,
                _ => false,
            };
            if !is_register_array {
                continue;
            }
            let name = match f.expressions[base] {
                naga::Expression::LocalVariable(v) => f.local_variables[v].name.clone(),
                naga::Expression::FunctionArgument(i) => f.arguments[i as usize].name.clone(),
                _ => None,
            };
            found.push(format!(
                "{}: {}",
                f.name.as_deref().unwrap_or("?"),
                name.unwrap_or_else(|| "(an array value)".into())
            ));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The register blocks of the GEMM kernels (the shared tile piece with the forward, dx and
/// Winograd's products in `conv2d_gemm`, dW in `conv2d_backward_weight_tiled`, the linear
/// layer's `matmul`) are indexed by constants only, and `conv2d_gemm`'s bias vectors too.
/// (Before: `acc[2u * i + jj]` in loops with `continue`, and lavapipe kept the 8x8 block in
/// memory: every 8x8 forward and dx GEMM ran 33-37% slower.)
#[test]
fn gemm_register_blocks_are_constant_indexed() {
    let gemm = ["conv2d_gemm", "conv2d_backward_weight_tiled", "matmul"];
    let mut checked = 0;
    for k in Kernel::ALL.into_iter().filter(|k| gemm.contains(&k.name())) {
        let found = dynamic_register_indexing(k.source());
        let blocks: Vec<&String> = found
            .iter()
            .filter(|f| f.ends_with(": acc") || f.ends_with(": bvals"))
            .collect();
        assert!(
            blocks.is_empty(),
            "{}: register blocks indexed at run time in {blocks:?}",
            k.name()
        );
        checked += 1;
    }
    assert!(checked >= 3, "the GEMM kernels are in the table");
}

/// The analysis finds what it looks for: an accumulator indexed in a loop, as the GEMM kernels
/// did.
#[test]
fn dynamic_register_indexing_is_found() {
    let src = "
        @group(0) @binding(0) var<storage, read_write> out: array<f32>;
        @compute @workgroup_size(1)
        fn main() {
            var acc: array<vec4<f32>, 16>;
            acc[3] = vec4<f32>(1.0);
            for (var i = 0u; i < 16u; i++) {
                out[i] = acc[i].x;
            }
        }";
    assert_eq!(dynamic_register_indexing(src), ["main: acc"]);
    let constant = src.replace("out[i] = acc[i].x;", "out[i] = acc[2].x;");
    assert!(dynamic_register_indexing(&constant).is_empty());
}
