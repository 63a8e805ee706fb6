//! NVIDIA GPU discovery through cudarc, loading the driver library at run
//! time: the default build needs no CUDA toolkit, and a machine without a
//! driver simply has no GPUs (cudarc panics if asked without checking that
//! the library is present first, so we check).

use sharenet_proto::{GpuInfo, MAX_ADVERT_GPUS};

/// The GPUs this machine has, or none (no driver, no device, or an error).
pub fn detect() -> Vec<GpuInfo> {
    match std::panic::catch_unwind(detect_inner) {
        Ok(Ok(gpus)) => gpus,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no usable NVIDIA GPU");
            Vec::new()
        }
        Err(_) => {
            tracing::info!("NVIDIA driver library could not be used; assuming no GPU");
            Vec::new()
        }
    }
}

fn detect_inner() -> Result<Vec<GpuInfo>, String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only probes whether the driver library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda) is not installed".into());
    }
    result::init().map_err(|e| format!("cuInit: {e}"))?;
    let count = result::device::get_count().map_err(|e| format!("count devices: {e}"))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) {
        let dev = result::device::get(ordinal).map_err(|e| format!("device {ordinal}: {e}"))?;
        let name =
            result::device::get_name(dev).map_err(|e| format!("device {ordinal} name: {e}"))?;
        // SAFETY: `dev` was returned by `device::get` above.
        let bytes = unsafe { result::device::total_mem(dev) }
            .map_err(|e| format!("device {ordinal} memory: {e}"))?;
        gpus.push(GpuInfo {
            name: name.chars().take(128).collect(),
            memory_mib: (bytes / (1024 * 1024)) as u64,
        });
        if gpus.len() == MAX_ADVERT_GPUS {
            break;
        }
    }
    Ok(gpus)
}

/// Whether the NVIDIA driver library (libcuda) can be loaded. Never
/// panics; candle must not be asked for a CUDA device without it (its
/// cudarc loads the library on first use and panics if it is missing).
pub fn driver_present() -> bool {
    // SAFETY: only probes whether the driver library can be loaded.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// A GPU's name and memory, as the driver reports them now.
#[derive(Debug, Clone)]
pub struct DeviceMemory {
    pub name: String,
    pub free: u64,
    pub total: u64,
}

/// Runs `query` on GPU `ordinal`'s primary context (the one candle uses,
/// so asking costs no extra device memory); no driver, a driver error or a
/// panic inside the driver are all an error.
fn query<T>(
    ordinal: usize,
    query: impl FnOnce(&cudarc::driver::CudaContext) -> Result<T, String>,
) -> Result<T, String> {
    if !driver_present() {
        return Err("the NVIDIA driver library (libcuda) is not installed".into());
    }
    let run = std::panic::AssertUnwindSafe(|| {
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| format!("open GPU {ordinal}: {e}"))?;
        query(&ctx)
    });
    std::panic::catch_unwind(run).unwrap_or_else(|_| Err("the NVIDIA driver panicked".into()))
}

/// Name, free and total memory of GPU `ordinal`.
pub fn memory(ordinal: usize) -> Result<DeviceMemory, String> {
    query(ordinal, |ctx| {
        let name = ctx.name().map_err(|e| format!("GPU {ordinal} name: {e}"))?;
        let (free, total) = ctx
            .mem_get_info()
            .map_err(|e| format!("GPU {ordinal} memory: {e}"))?;
        Ok(DeviceMemory {
            name,
            free: free as u64,
            total: total as u64,
        })
    })
}

/// Peak memory bandwidth of GPU `ordinal` in bytes per second, from its
/// memory clock and bus width (DDR: two transfers a clock), e.g. 3.35 TB/s
/// for an H100 SXM.
pub fn bandwidth(ordinal: usize) -> Result<u64, String> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    query(ordinal, |ctx| {
        let khz = ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .map_err(|e| format!("GPU {ordinal} memory clock: {e}"))?;
        let bits = ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .map_err(|e| format!("GPU {ordinal} bus width: {e}"))?;
        if khz <= 0 || bits <= 0 {
            return Err(format!(
                "GPU {ordinal} reports clock {khz} kHz, bus {bits} bits"
            ));
        }
        Ok(khz as u64 * 1000 * 2 * bits as u64 / 8)
    })
}

/// Working space a model needs on a GPU beyond its weights and KV cache
/// budget: activations of a prefill chunk, cuBLAS workspaces, candle's
/// kernel modules.
pub const WORKING_SPACE_BYTES: u64 = 512 << 20;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Before loading: the weights (about their files' size), the KV cache
/// budget (allocated at load, as one pool) and the working space must fit
/// in what is free.
pub fn check_fits(
    model: &str,
    ordinal: usize,
    mem: &DeviceMemory,
    weights: u64,
    kv_budget: u64,
) -> Result<(), String> {
    let need = weights + kv_budget + WORKING_SPACE_BYTES;
    if need > mem.free {
        return Err(format!(
            "model {model:?} does not fit on cuda:{ordinal} ({}): it needs about {} ({} of \
             weights, a KV cache budget of {} (kv_cache_mb) and {} of working space) but only \
             {} of {} are free; lower kv_cache_mb or use a smaller or quantized model",
            mem.name,
            gib(need),
            gib(weights),
            gib(kv_budget),
            gib(WORKING_SPACE_BYTES),
            gib(mem.free),
            gib(mem.total)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn detection_never_panics_and_reports_sane_values() {
        // On a machine without a driver this is empty; with one, every GPU
        // has a name and memory.
        for g in super::detect() {
            assert!(!g.name.is_empty());
            assert!(g.memory_mib > 0);
        }
    }

    #[test]
    fn a_model_that_does_not_fit_is_an_error_naming_the_gpu_and_the_sizes() {
        let mem = super::DeviceMemory {
            name: "NVIDIA H100 80GB HBM3".into(),
            free: 20 << 30,
            total: 80 << 30,
        };
        assert!(super::check_fits("m", 0, &mem, 16 << 30, 2 << 30).is_ok());
        let err = super::check_fits("llama-8b", 1, &mem, 16 << 30, 8 << 30).unwrap_err();
        for part in [
            "llama-8b",
            "cuda:1",
            "NVIDIA H100 80GB HBM3",
            "24.5 GiB",
            "16.0 GiB of weights",
            "8.0 GiB (kv_cache_mb)",
            "20.0 GiB of 80.0 GiB are free",
        ] {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }
    }

    #[test]
    fn without_a_driver_memory_is_an_error_not_a_panic() {
        if !super::driver_present() {
            let err = super::memory(0).unwrap_err();
            assert!(err.contains("libcuda"), "{err}");
        }
    }
}
