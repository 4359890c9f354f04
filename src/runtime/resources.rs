//! What the runtime can run and where: capacity, use and queue, the seed's
//! resource-manager operations, and volumes mirrored to Modal.

use std::sync::Arc;

use super::{Runtime, RuntimeError};
use crate::compute::{BackendError, Capacity, ModalBackend, SyncReport};
use crate::registry::FunctionInfo;
use crate::spec::FunctionSpec;

/// The seed's resource status: capacity, and what is used and queued.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ResourceReport {
    /// What the backend can run.
    pub capacity: Capacity,
    /// What is in use and waiting, when the backend tracks it.
    pub usage: Option<crate::compute::Usage>,
    /// The Modal backend: whether it is configured and has credentials.
    pub modal: ModalStatus,
}

/// GPUs granted by [`Runtime::request_gpu_resources`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GpuAllocation {
    /// The GPUs.
    pub gpu: crate::spec::GpuSpec,
    /// The function redeployed to use them, when one was named.
    pub function_name: Option<String>,
    /// The resources after the allocation.
    pub resources: ResourceReport,
}

/// Whether functions can be sent to Modal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModalStatus {
    /// A Modal backend is part of the runtime.
    pub configured: bool,
    /// It has credentials (Modal may still refuse them).
    pub credentials: bool,
}

impl Runtime {
    /// What the compute backend can run.
    pub fn capacity(&self) -> Capacity {
        self.inner.backend.capacity()
    }

    /// Capacity, what is in use and what waits (the seed's resource status).
    pub fn resources(&self) -> ResourceReport {
        ResourceReport {
            capacity: self.inner.backend.capacity(),
            usage: self.inner.backend.usage(),
            modal: ModalStatus {
                configured: self.inner.modal.is_some(),
                credentials: self
                    .inner
                    .modal
                    .as_ref()
                    .is_some_and(|m| m.has_credentials()),
            },
        }
    }

    /// The seed's `request_gpu_resources`: checks that `count` GPUs of
    /// `gpu_type` can be had and, with `function_name`, redeploys that
    /// function asking for them.
    pub async fn request_gpu_resources(
        &self,
        gpu_type: &str,
        count: u8,
        function_name: Option<&str>,
    ) -> Result<GpuAllocation, RuntimeError> {
        let gpu: crate::spec::GpuSpec = format!("{gpu_type}:{count}").parse()?;
        let spec = match function_name {
            Some(name) => {
                let mut spec = self
                    .function(name)
                    .ok_or_else(|| RuntimeError::UnknownFunction(name.to_owned()))?
                    .spec;
                spec.resources.gpu = Some(gpu.clone());
                self.deploy_function(spec).await?;
                Some(name.to_owned())
            }
            None => {
                // Validate against the machine without deploying anything.
                let probe =
                    FunctionSpec::new("gpu_probe", "def gpu_probe(): pass").gpu(gpu.clone());
                self.check_fits(&probe).await?;
                None
            }
        };
        Ok(GpuAllocation {
            gpu,
            function_name: spec,
            resources: self.resources(),
        })
    }

    /// The seed's `request_compute_resources`: whether a container with
    /// `cpu_count` cores and `memory_gb` GiB can run here (an error says why
    /// not), and what is free.
    pub async fn request_compute_resources(
        &self,
        cpu_count: f64,
        memory_gb: f64,
        timeout_s: u32,
    ) -> Result<ResourceReport, RuntimeError> {
        let probe = FunctionSpec::new("compute_probe", "def compute_probe(): pass")
            .cpu(cpu_count)
            .memory_mib((memory_gb * 1024.0).ceil() as u64)
            .timeout_s(timeout_s);
        probe.validate()?;
        self.check_fits(&probe).await?;
        Ok(self.resources())
    }

    async fn check_fits(&self, spec: &FunctionSpec) -> Result<(), RuntimeError> {
        Ok(self.inner.backend.check_resources(spec).await?)
    }

    /// The seed's `create_volume`: the volume's directory, once it exists.
    pub async fn create_volume(
        &self,
        name: &str,
    ) -> Result<std::path::PathBuf, crate::volume::VolumeError> {
        self.volumes().create(name).await?;
        Ok(self.volume_dir(name))
    }

    /// The seed's `mount_secrets`: redeploys `function_name` with the secrets
    /// added (every name must exist).
    pub async fn mount_secrets(
        &self,
        secret_names: &[String],
        function_name: &str,
    ) -> Result<FunctionInfo, RuntimeError> {
        let mut spec = self
            .function(function_name)
            .ok_or_else(|| RuntimeError::UnknownFunction(function_name.to_owned()))?
            .spec;
        for s in secret_names {
            if !spec.secrets.contains(s) {
                spec.secrets.push(s.clone());
            }
        }
        self.deploy_function(spec).await
    }

    /// Uploads what changed in volume `name` to the Modal Volume of the same
    /// name (created there if missing).
    pub async fn push_volume(&self, name: &str) -> Result<SyncReport, RuntimeError> {
        let modal = self.modal_backend()?;
        crate::spec::validate_object_name("name", name)?;
        modal
            .push_volume(name, &self.volume_dir(name))
            .await
            .map_err(RuntimeError::Backend)
    }

    /// Downloads what changed in the Modal Volume `name` into the runtime's
    /// volume of the same name.
    pub async fn pull_volume(&self, name: &str) -> Result<SyncReport, RuntimeError> {
        let modal = self.modal_backend()?;
        crate::spec::validate_object_name("name", name)?;
        modal
            .pull_volume(name, &self.volume_dir(name))
            .await
            .map_err(RuntimeError::Backend)
    }

    fn modal_backend(&self) -> Result<&Arc<ModalBackend>, RuntimeError> {
        self.inner.modal.as_ref().ok_or_else(|| {
            RuntimeError::Backend(BackendError::NoBackend(
                "this runtime has no Modal backend (RuntimeBuilder::modal)".into(),
            ))
        })
    }
}
