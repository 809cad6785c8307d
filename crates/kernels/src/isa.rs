//! Which instruction sets the fast paths use, probed once at run time.
//!
//! Two choices are made: the f32 vector width ([`Isa`]: dot products, attention, norms) and
//! the int8 dot-product kernel family ([`Int8`]: the quantized matmuls). They are separate
//! because CPUs mix them: an AVX-512 CPU without VNNI (Skylake-X) runs f32 at 512 bits and
//! int8 through AVX2; Alder Lake has no AVX-512 but has the 256-bit AVX-VNNI.
//!
//! `MOESTREAM_ISA` caps both, so a narrower path can be measured (and tested) on a wider
//! machine: `scalar`, `avx2` (no VNNI of any width: what an AMD Zen 2/3 has), `avxvnni`,
//! `avx512`; on aarch64 `scalar`, `neon` (no dotprod: Cortex-A72), `dotprod`, `i8mm`. A cap above what
//! the CPU has changes nothing; an unknown value is reported once on stderr and ignored.

use std::sync::OnceLock;

/// The f32 vector instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

/// The int8 dot-product kernel family of the quantized matmuls (`None`: f32 activations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8 {
    None,
    /// `vpmaddubsw` + `vpmaddwd` (AVX2 only).
    Avx2,
    /// 256-bit `vpdpbusd` (AVX-VNNI: Alder Lake and later, Zen 5).
    AvxVnni,
    /// 512-bit `vpdpbusd` (AVX-512 VNNI with BW and VL).
    Avx512Vnni,
    /// `smlal` widening multiply-accumulate (baseline Armv8 NEON).
    Neon,
    /// `sdot` (Armv8.2 dotprod: Apple M1+, Graviton 2+, Neoverse, Grace).
    NeonDot,
    /// `sdot` for one activation row, `smmla` (2x8 by 8x2 int8 tiles) for pairs of them
    /// (Armv8.6 i8mm: Apple M2+, Graviton 3+, Neoverse V1/V2, Grace).
    NeonI8mm,
}

impl Int8 {
    /// The name used in `MOESTREAM_ISA`, run summaries and bench JSON.
    pub fn name(self) -> &'static str {
        match self {
            Int8::None => "none",
            Int8::Avx2 => "avx2",
            Int8::AvxVnni => "avxvnni",
            Int8::Avx512Vnni => "avx512vnni",
            Int8::Neon => "neon",
            Int8::NeonDot => "dotprod",
            Int8::NeonI8mm => "i8mm",
        }
    }
}

/// How far `MOESTREAM_ISA` lets the choice go, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cap {
    Scalar,
    Avx2,
    AvxVnni,
    Avx512,
    Neon,
    DotProd,
    I8mm,
    None,
}

fn cap() -> Cap {
    match std::env::var("MOESTREAM_ISA").as_deref() {
        Err(_) | Ok("") => Cap::None,
        Ok("scalar") => Cap::Scalar,
        Ok("avx2") => Cap::Avx2,
        Ok("avxvnni") => Cap::AvxVnni,
        Ok("avx512") => Cap::Avx512,
        Ok("neon") => Cap::Neon,
        Ok("dotprod") => Cap::DotProd,
        Ok("i8mm") => Cap::I8mm,
        Ok(other) => {
            eprintln!(
                "MOESTREAM_ISA={other:?} is not one of scalar, avx2, avxvnni, avx512, neon, \
                 dotprod, i8mm: ignored"
            );
            Cap::None
        }
    }
}

fn choice() -> (Isa, Int8) {
    static CHOICE: OnceLock<(Isa, Int8)> = OnceLock::new();
    *CHOICE.get_or_init(|| detect(cap()))
}

/// The f32 vector instruction set the fast paths use on this machine.
pub fn isa() -> Isa {
    choice().0
}

/// The int8 kernel family the quantized matmuls use on this machine.
pub fn int8() -> Int8 {
    choice().1
}

/// The kernels in use, for run summaries: `"int8 avx2, f32 avx2"` (`MOESTREAM_ISA` included).
pub fn summary() -> String {
    let f32 = match isa() {
        Isa::Scalar => "scalar",
        Isa::Avx2 => "avx2",
        Isa::Avx512 => "avx512",
        Isa::Neon => "neon",
    };
    format!("int8 {}, f32 {f32}", int8().name())
}

/// Every int8 kernel family this CPU can run, narrowest first (tests hold each of them to
/// the reference, not only the one [`int8`] picks).
pub fn int8_available() -> Vec<Int8> {
    let caps = [
        Cap::Avx2,
        Cap::AvxVnni,
        Cap::Avx512,
        Cap::Neon,
        Cap::DotProd,
        Cap::I8mm,
    ];
    let mut all = Vec::new();
    for int8 in caps.map(|c| detect(c).1) {
        if int8 != Int8::None && !all.contains(&int8) {
            all.push(int8);
        }
    }
    all
}

/// Every f32 instruction set this CPU can run, narrowest first (for tests).
pub fn isa_available() -> Vec<Isa> {
    let mut all = Vec::new();
    for cap in [Cap::Scalar, Cap::Avx2, Cap::Avx512, Cap::Neon] {
        let isa = detect(cap).0;
        if !all.contains(&isa) {
            all.push(isa);
        }
    }
    all
}

#[cfg(target_arch = "x86_64")]
fn detect(cap: Cap) -> (Isa, Int8) {
    use std::arch::is_x86_feature_detected as has;
    let allows = |level: Cap| cap >= level && cap < Cap::Neon || cap == Cap::None;
    let avx2 = allows(Cap::Avx2) && has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = allows(Cap::Avx512) && avx2 && has!("avx512f");
    let isa = match (avx512, avx2) {
        (true, _) => Isa::Avx512,
        (_, true) => Isa::Avx2,
        _ => Isa::Scalar,
    };
    let int8 = if avx512 && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
        Int8::Avx512Vnni
    } else if avx2 && allows(Cap::AvxVnni) && has!("avxvnni") {
        Int8::AvxVnni
    } else if avx2 {
        Int8::Avx2
    } else {
        Int8::None
    };
    (isa, int8)
}

#[cfg(target_arch = "aarch64")]
fn detect(cap: Cap) -> (Isa, Int8) {
    use std::arch::is_aarch64_feature_detected as has;
    let allows = |level: Cap| cap >= level || cap == Cap::None;
    // NEON is part of the aarch64 base ISA; only `scalar` turns it off.
    if !allows(Cap::Neon) {
        return (Isa::Scalar, Int8::None);
    }
    let int8 = if allows(Cap::I8mm) && has!("dotprod") && has!("i8mm") {
        Int8::NeonI8mm
    } else if allows(Cap::DotProd) && has!("dotprod") {
        Int8::NeonDot
    } else {
        Int8::Neon
    };
    (Isa::Neon, int8)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect(_cap: Cap) -> (Isa, Int8) {
    (Isa::Scalar, Int8::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_never_exceed_the_cpu_and_scalar_turns_everything_off() {
        assert_eq!(detect(Cap::Scalar), (Isa::Scalar, Int8::None));
        let full = detect(Cap::None);
        #[cfg(target_arch = "x86_64")]
        {
            let (isa, int8) = detect(Cap::Avx2);
            assert!(matches!(isa, Isa::Avx2 | Isa::Scalar));
            assert!(matches!(int8, Int8::Avx2 | Int8::None));
            assert_ne!(detect(Cap::AvxVnni).1, Int8::Avx512Vnni);
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(detect(Cap::Neon), (Isa::Neon, Int8::Neon));
        // Every available family is one the uncapped detection could reach or a narrower one.
        let avail = int8_available();
        assert!(full.1 == Int8::None || avail.contains(&full.1));
        eprintln!(
            "int8 kernel families on this CPU: {avail:?} (default {:?})",
            full.1
        );
    }
}
