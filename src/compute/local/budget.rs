//! The machine's resources and what containers hold of them: CPU and memory
//! reserved per container (the function's `cpu`/`memory_mib`, or Modal's
//! defaults of 0.125 cores and 128 MiB), GPUs assigned by index. A container
//! that does not fit waits in a queue instead of overcommitting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::spec::{FunctionSpec, GpuRequest, GpuType, SpecError};
use crate::sync::Recover;

/// CPU reserved for a container whose function names none, in millicores.
pub(crate) const DEFAULT_CPU_MILLI: u32 = 125;
/// Memory reserved for a container whose function names none.
pub(crate) const DEFAULT_MEMORY_MIB: u32 = 128;

/// One local GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// Its index, as `CUDA_VISIBLE_DEVICES` counts.
    pub index: u32,
    /// Its model name, as `nvidia-smi` reports it.
    pub name: String,
}

impl GpuDevice {
    /// The GPU type this device serves, when it is one Modal names.
    fn kind(&self) -> Option<GpuType> {
        let n = self.name.to_ascii_uppercase();
        let has = |s: &str| n.contains(s);
        Some(if has("H200") {
            GpuType::H200
        } else if has("H100") {
            GpuType::H100
        } else if has("B200") {
            GpuType::B200
        } else if has("A100") && has("80") {
            GpuType::A100_80GB
        } else if has("A100") {
            GpuType::A100_40GB
        } else if has("L40S") {
            GpuType::L40S
        } else if has("A10") {
            GpuType::A10
        } else if has("L4") {
            GpuType::L4
        } else if has("T4") {
            GpuType::T4
        } else if has("RTX PRO 6000") || has("RTX-PRO-6000") {
            GpuType::RtxPro6000
        } else {
            return None;
        })
    }
}

/// Whether a device can serve a requested type (`A100` takes either size,
/// `H100` may get an H200, `B200+` a B200).
fn serves(device: Option<GpuType>, wanted: GpuType) -> bool {
    let Some(d) = device else { return false };
    match wanted {
        GpuType::A100 => matches!(d, GpuType::A100_40GB | GpuType::A100_80GB),
        GpuType::H100 => matches!(d, GpuType::H100 | GpuType::H200),
        GpuType::H100Exact => d == GpuType::H100,
        GpuType::B200Plus => d == GpuType::B200,
        other => d == other,
    }
}

/// Asks `nvidia-smi` for the machine's GPUs (none when it is missing).
pub(crate) async fn detect_gpus() -> Vec<GpuDevice> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,name", "--format=csv,noheader"])
        .kill_on_drop(true)
        .output()
        .await;
    let Ok(out) = out else { return Vec::new() };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (i, name) = l.split_once(',')?;
            Some(GpuDevice {
                index: i.trim().parse().ok()?,
                name: name.trim().to_owned(),
            })
        })
        .collect()
}

/// What is in use and waiting, for reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Cores reserved by running containers.
    pub cpu_used: f64,
    /// Cores in all.
    pub cpu_total: f64,
    /// Memory reserved, in MiB.
    pub memory_used_mib: u64,
    /// Memory in all, in MiB.
    pub memory_total_mib: u64,
    /// The GPUs and which are assigned.
    pub gpus: Vec<GpuUse>,
    /// Containers waiting for resources to free up.
    pub queued_containers: u64,
}

/// One GPU's assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUse {
    /// The device.
    pub device: GpuDevice,
    /// Whether a container holds it.
    pub in_use: bool,
}

/// The machine's resource budget.
#[derive(Debug)]
pub(crate) struct Budget {
    cpu_milli: u32,
    memory_mib: u32,
    cpu: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    gpus: Mutex<Vec<(GpuDevice, bool)>>,
    gpu_freed: tokio::sync::Notify,
    queued: AtomicU64,
}

/// What one container holds; given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    _cpu: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
    gpus: Vec<u32>,
    budget: Arc<Budget>,
}

impl Reservation {
    /// Indices of the GPUs it holds.
    pub(crate) fn gpus(&self) -> &[u32] {
        &self.gpus
    }

    /// `CUDA_VISIBLE_DEVICES` for the container, when it holds GPUs.
    pub(crate) fn cuda_visible_devices(&self) -> Option<String> {
        (!self.gpus.is_empty()).then(|| {
            self.gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.gpus.is_empty() {
            return;
        }
        let mut gpus = self.budget.gpus.lock().recover();
        for (d, used) in gpus.iter_mut() {
            if self.gpus.contains(&d.index) {
                *used = false;
            }
        }
        drop(gpus);
        self.budget.gpu_freed.notify_waiters();
    }
}

fn cpu_milli(spec: &FunctionSpec) -> u32 {
    spec.resources
        .cpu
        .map_or(DEFAULT_CPU_MILLI, |c| (c * 1000.0).ceil() as u32)
        .max(1)
}

fn memory_mib(spec: &FunctionSpec) -> u32 {
    spec.resources
        .memory_mib
        .map_or(DEFAULT_MEMORY_MIB, |m| m.min(u64::from(u32::MAX)) as u32)
}

impl Budget {
    pub(crate) fn new(cores: f64, memory_mib: u64, gpus: Vec<GpuDevice>) -> Arc<Budget> {
        let cpu_milli = (cores * 1000.0) as u32;
        let memory_mib = memory_mib.min(u64::from(u32::MAX) / 2) as u32;
        Arc::new(Budget {
            cpu_milli,
            memory_mib,
            cpu: Arc::new(Semaphore::new(cpu_milli as usize)),
            memory: Arc::new(Semaphore::new(memory_mib as usize)),
            gpus: Mutex::new(gpus.into_iter().map(|d| (d, false)).collect()),
            gpu_freed: tokio::sync::Notify::new(),
            queued: AtomicU64::new(0),
        })
    }

    pub(crate) fn devices(&self) -> Vec<GpuDevice> {
        self.gpus
            .lock()
            .recover()
            .iter()
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Refuses what this machine can never give, naming the resource, what
    /// was asked and what exists.
    pub(crate) fn check(&self, spec: &FunctionSpec) -> Result<(), SpecError> {
        let cores = f64::from(self.cpu_milli) / 1000.0;
        if let Some(cpu) = spec.resources.cpu {
            if cpu_milli(spec) > self.cpu_milli {
                return Err(SpecError::invalid(
                    "resources.cpu",
                    cpu,
                    format!("at most {cores} cores: this machine has {cores}"),
                ));
            }
        }
        if let Some(mem) = spec.resources.memory_mib {
            if memory_mib(spec) > self.memory_mib {
                return Err(SpecError::invalid(
                    "resources.memory_mib",
                    mem,
                    format!(
                        "at most {} MiB: this machine has {} MiB",
                        self.memory_mib, self.memory_mib
                    ),
                ));
            }
        }
        if let Some(gpu) = &spec.resources.gpu {
            let devices = self.devices();
            let feasible = gpu.choices().iter().any(|c| {
                devices.iter().filter(|d| serves(d.kind(), c.kind)).count() >= usize::from(c.count)
            });
            if !feasible {
                let has = if devices.is_empty() {
                    "this machine has no GPU".to_owned()
                } else {
                    format!(
                        "this machine has {}",
                        devices
                            .iter()
                            .map(|d| d.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(SpecError::invalid(
                    "gpu",
                    gpu,
                    format!("a GPU this machine can give: {has} (run it on Modal, or on a machine with that GPU)"),
                ));
            }
        }
        Ok(())
    }

    fn take_gpus(&self, choices: &[GpuRequest]) -> Option<Vec<u32>> {
        if choices.is_empty() {
            return Some(Vec::new());
        }
        let mut gpus = self.gpus.lock().recover();
        for c in choices {
            let free: Vec<usize> = gpus
                .iter()
                .enumerate()
                .filter(|(_, (d, used))| !used && serves(d.kind(), c.kind))
                .map(|(i, _)| i)
                .take(usize::from(c.count))
                .collect();
            if free.len() == usize::from(c.count) {
                return Some(
                    free.into_iter()
                        .map(|i| {
                            gpus[i].1 = true;
                            gpus[i].0.index
                        })
                        .collect(),
                );
            }
        }
        None
    }

    /// Reserves what one container of `spec` needs, waiting while it does not fit.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        spec: &FunctionSpec,
    ) -> Result<Reservation, String> {
        struct Queued<'a>(&'a AtomicU64);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let _queued = Queued(&self.queued);
        async {
            let cpu = self
                .cpu
                .clone()
                .acquire_many_owned(cpu_milli(spec).min(self.cpu_milli))
                .await
                .map_err(|_| "the resource budget is closed".to_owned())?;
            let memory = self
                .memory
                .clone()
                .acquire_many_owned(memory_mib(spec).min(self.memory_mib))
                .await
                .map_err(|_| "the resource budget is closed".to_owned())?;
            let choices: Vec<GpuRequest> = spec
                .resources
                .gpu
                .as_ref()
                .map(|g| g.choices().to_vec())
                .unwrap_or_default();
            let gpus = loop {
                let freed = self.gpu_freed.notified();
                if let Some(g) = self.take_gpus(&choices) {
                    break g;
                }
                freed.await;
            };
            Ok(Reservation {
                _cpu: cpu,
                _memory: memory,
                gpus,
                budget: self.clone(),
            })
        }
        .await
    }

    /// Reserves at once, or `None` when it does not fit now.
    pub(crate) fn try_reserve(self: &Arc<Self>, spec: &FunctionSpec) -> Option<Reservation> {
        let cpu = self
            .cpu
            .clone()
            .try_acquire_many_owned(cpu_milli(spec).min(self.cpu_milli))
            .ok()?;
        let memory = self
            .memory
            .clone()
            .try_acquire_many_owned(memory_mib(spec).min(self.memory_mib))
            .ok()?;
        let choices: Vec<GpuRequest> = spec
            .resources
            .gpu
            .as_ref()
            .map(|g| g.choices().to_vec())
            .unwrap_or_default();
        let gpus = self.take_gpus(&choices)?;
        Some(Reservation {
            _cpu: cpu,
            _memory: memory,
            gpus,
            budget: self.clone(),
        })
    }

    pub(crate) fn usage(&self) -> Usage {
        let gpus = self.gpus.lock().recover();
        Usage {
            cpu_used: f64::from(self.cpu_milli - self.cpu.available_permits() as u32) / 1000.0,
            cpu_total: f64::from(self.cpu_milli) / 1000.0,
            memory_used_mib: u64::from(self.memory_mib - self.memory.available_permits() as u32),
            memory_total_mib: u64::from(self.memory_mib),
            gpus: gpus
                .iter()
                .map(|(d, used)| GpuUse {
                    device: d.clone(),
                    in_use: *used,
                })
                .collect(),
            queued_containers: self.queued.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32, name: &str) -> GpuDevice {
        GpuDevice {
            index,
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn gpus_are_assigned_and_given_back() {
        let b = Budget::new(
            8.0,
            32_000,
            vec![device(0, "Tesla T4"), device(1, "NVIDIA A100-SXM4-80GB")],
        );
        let a100 = FunctionSpec::new("f", "x").gpu("A100".parse().unwrap());
        let r = b.reserve(&a100).await.unwrap();
        assert_eq!(r.cuda_visible_devices().as_deref(), Some("1"));
        let fallback = FunctionSpec::new("g", "x")
            .gpu(crate::spec::GpuSpec::fallback(["A100", "T4"]).unwrap());
        let r2 = b.reserve(&fallback).await.unwrap();
        assert_eq!(
            r2.cuda_visible_devices().as_deref(),
            Some("0"),
            "falls back to the free T4"
        );
        assert!(b.usage().gpus.iter().all(|g| g.in_use));
        drop(r);
        let r3 = b.reserve(&a100).await.unwrap();
        assert_eq!(r3.cuda_visible_devices().as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn impossible_requests_name_what_exists() {
        let b = Budget::new(2.0, 1024, vec![]);
        let err = b
            .check(&FunctionSpec::new("f", "x").cpu(4.0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("resources.cpu")
                && err.contains('4')
                && err.contains("this machine has 2"),
            "{err}"
        );
        let err = b
            .check(&FunctionSpec::new("f", "x").memory_mib(4096))
            .unwrap_err()
            .to_string();
        assert!(err.contains("4096") && err.contains("1024"), "{err}");
        let err = b
            .check(&FunctionSpec::new("f", "x").gpu("H100:2".parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("H100:2") && err.contains("no GPU"), "{err}");
        b.check(&FunctionSpec::new("f", "x").cpu(2.0).memory_mib(1024))
            .unwrap();
    }

    #[tokio::test]
    async fn containers_past_the_budget_wait() {
        let b = Budget::new(1.0, 10_000, vec![]);
        let spec = FunctionSpec::new("f", "x").cpu(0.75);
        let first = b.reserve(&spec).await.unwrap();
        assert_eq!(b.usage().cpu_used, 0.75);
        let b2 = b.clone();
        let spec2 = spec.clone();
        let waiter = tokio::spawn(async move { b2.reserve(&spec2).await.map(drop) });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while b.usage().queued_containers == 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        assert!(b.usage().cpu_used <= 1.0, "never past the budget");
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(b.usage().queued_containers, 0);
    }
}
