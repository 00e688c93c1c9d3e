//! Shader sources: each kernel file under `shaders/` joined with the shared pieces of
//! `shaders/lib/` it names.
//!
//! The include step is deliberately small: a line `// #include lib/NAME.wgsl` in a kernel file
//! is replaced by that library file, in place, once per kernel. Library files include nothing,
//! and a kernel names each piece once. A line naming a file that is not in [`LIBRARY`] stays a
//! comment, so the WGSL fails to validate (an undeclared name) and the error surfaces through
//! the op's error scope instead of a panic; a GPU-free test asserts that every include of the
//! built-in kernels resolves.

/// The shared WGSL pieces, by the path a kernel's include line names.
pub const LIBRARY: [(&str, &str); 15] = [
    // The f32 piece; a pipeline on another storage path swaps it (storage.rs).
    (
        super::storage::ELEM,
        include_str!("../../../shaders/lib/elem.wgsl"),
    ),
    (
        "lib/dtype.wgsl",
        include_str!("../../../shaders/lib/dtype.wgsl"),
    ),
    (
        "lib/dx_taps.wgsl",
        include_str!("../../../shaders/lib/dx_taps.wgsl"),
    ),
    (
        "lib/winograd_params.wgsl",
        include_str!("../../../shaders/lib/winograd_params.wgsl"),
    ),
    (
        "lib/conv_params.wgsl",
        include_str!("../../../shaders/lib/conv_params.wgsl"),
    ),
    (
        "lib/pool_params.wgsl",
        include_str!("../../../shaders/lib/pool_params.wgsl"),
    ),
    (
        "lib/ids.wgsl",
        include_str!("../../../shaders/lib/ids.wgsl"),
    ),
    (
        "lib/per_element.wgsl",
        include_str!("../../../shaders/lib/per_element.wgsl"),
    ),
    (
        "lib/elt_params.wgsl",
        include_str!("../../../shaders/lib/elt_params.wgsl"),
    ),
    (
        "lib/rows_params.wgsl",
        include_str!("../../../shaders/lib/rows_params.wgsl"),
    ),
    (
        "lib/workgroup_sum.wgsl",
        include_str!("../../../shaders/lib/workgroup_sum.wgsl"),
    ),
    (
        "lib/gemm_tile.wgsl",
        include_str!("../../../shaders/lib/gemm_tile.wgsl"),
    ),
    (
        "lib/lattice.wgsl",
        include_str!("../../../shaders/lib/lattice.wgsl"),
    ),
    (
        "lib/pool_window.wgsl",
        include_str!("../../../shaders/lib/pool_window.wgsl"),
    ),
    (
        "lib/avg_window.wgsl",
        include_str!("../../../shaders/lib/avg_window.wgsl"),
    ),
];

/// The marker of an include line.
pub const INCLUDE: &str = "// #include ";

/// The library paths a kernel file includes, in order.
pub fn includes(file: &str) -> impl Iterator<Item = &str> {
    file.lines()
        .filter_map(|line| line.trim().strip_prefix(INCLUDE).map(str::trim))
}

/// The library piece at `path`, if there is one.
pub fn library(path: &str) -> Option<&'static str> {
    LIBRARY.iter().find(|(p, _)| *p == path).map(|&(_, s)| s)
}

/// A kernel file with each include line replaced by its library piece (framed by comments
/// naming it, so that a compiler message can be traced back to the file).
pub fn assemble(file: &str) -> String {
    let mut out = String::with_capacity(file.len() + 4096);
    for line in file.lines() {
        let piece = line
            .trim()
            .strip_prefix(INCLUDE)
            .and_then(|p| library(p.trim()).map(|s| (p.trim(), s)));
        match piece {
            Some((path, text)) => {
                out.push_str(&format!("// ---- begin shaders/{path} ----\n"));
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&format!("// ---- end shaders/{path} ----\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_are_replaced_in_place_and_unknown_ones_stay_comments() {
        let file = "a\n// #include lib/ids.wgsl\nb\n// #include lib/nope.wgsl\n";
        let s = assemble(file);
        assert!(s.starts_with("a\n// ---- begin shaders/lib/ids.wgsl ----\n"));
        assert!(s.contains("fn workgroup_item"));
        assert!(s.contains("// ---- end shaders/lib/ids.wgsl ----\nb\n"));
        assert!(s.ends_with("// #include lib/nope.wgsl\n"));
        assert_eq!(
            includes(file).collect::<Vec<_>>(),
            ["lib/ids.wgsl", "lib/nope.wgsl"]
        );
    }

    #[test]
    fn library_pieces_include_nothing() {
        for (path, text) in LIBRARY {
            assert_eq!(includes(text).count(), 0, "{path}");
        }
    }
}
