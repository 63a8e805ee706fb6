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
}
