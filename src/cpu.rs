//! What the CPU this process runs on offers, read at run time: the instruction-set extensions that
//! decide pipe's CPU-dependent choices (the fine-tuning precision) and what int8 inference gains (the
//! int8 dot-product instructions).

/// Instruction-set extensions of the CPU, as CPUID reports them (all `false` off x86-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// AVX512_BF16: bf16 dot products in AVX-512 registers (oneDNN's `avx512_core_bf16` kernels).
    pub avx512_bf16: bool,
    /// AMX-BF16 tiles (oneDNN's `avx512_core_amx` kernels). Every CPU with AMX also has AVX512_BF16.
    pub amx_bf16: bool,
    /// AVX512_VNNI: int8 dot products in AVX-512 registers (`vpdpbusd`), which ONNX Runtime's int8
    /// kernels use.
    pub avx512_vnni: bool,
    /// AVX-VNNI: the same int8 dot products in AVX2 registers (Alder Lake and later client CPUs).
    pub avx_vnni: bool,
}

impl CpuFeatures {
    /// The features of the CPU this process runs on.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // AMX-BF16 is CPUID leaf 7, sub-leaf 0, EDX bit 22 (`is_x86_feature_detected!` for AMX is
            // not stable Rust).
            let amx = std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0;
            CpuFeatures {
                avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
                amx_bf16: amx,
                avx512_vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                avx_vnni: std::arch::is_x86_feature_detected!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }

    /// The int8 dot-product instructions of the CPU (`AVX512_VNNI`, or `AVX-VNNI`), `None` without
    /// them: there an int8 model gains little speed (ONNX Runtime's int8 kernels fall back to
    /// multiply-adds that can saturate, see `pipe export --reduce-range`).
    pub fn int8_dot_product(&self) -> Option<&'static str> {
        if self.avx512_vnni {
            Some("AVX512_VNNI")
        } else if self.avx_vnni {
            Some("AVX-VNNI")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CpuFeatures;

    /// Detection agrees with the standard library's.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn detection_agrees_with_the_standard_library() {
        let cpu = CpuFeatures::detect();
        assert_eq!(
            cpu.avx512_bf16,
            std::arch::is_x86_feature_detected!("avx512bf16")
        );
        assert_eq!(
            cpu.avx512_vnni,
            std::arch::is_x86_feature_detected!("avx512vnni")
        );
        assert_eq!(
            cpu.int8_dot_product().is_some(),
            cpu.avx512_vnni || cpu.avx_vnni
        );
    }

    #[test]
    fn int8_dot_products_prefer_the_avx512_name() {
        let both = CpuFeatures {
            avx512_vnni: true,
            avx_vnni: true,
            ..CpuFeatures::default()
        };
        assert_eq!(both.int8_dot_product(), Some("AVX512_VNNI"));
        let client = CpuFeatures {
            avx_vnni: true,
            ..CpuFeatures::default()
        };
        assert_eq!(client.int8_dot_product(), Some("AVX-VNNI"));
        assert_eq!(CpuFeatures::default().int8_dot_product(), None);
    }
}
