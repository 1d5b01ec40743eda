//! What the CPU this process runs on offers, read once at run time: the instruction-set extensions
//! that decide pipe's CPU-dependent choices (the fine-tuning precision, and what a reader of a figure
//! needs to know about the machine it was measured on).

/// Instruction-set extensions of the CPU, as CPUID reports them (all `false` off x86-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// AVX512_BF16: bf16 dot products in AVX-512 registers (oneDNN's `avx512_core_bf16` kernels).
    pub avx512_bf16: bool,
    /// AMX-BF16 tiles (oneDNN's `avx512_core_amx` kernels). Every CPU with AMX also has AVX512_BF16.
    pub amx_bf16: bool,
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
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }
}

#[cfg(test)]
mod tests {
    use super::CpuFeatures;

    /// Detection agrees with the standard library's.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn detection_agrees_with_the_standard_library() {
        assert_eq!(
            CpuFeatures::detect().avx512_bf16,
            std::arch::is_x86_feature_detected!("avx512bf16")
        );
    }
}
