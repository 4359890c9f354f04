//! Containers under bubblewrap (`bwrap`): a read-only system, a private `/tmp`,
//! fresh pid/ipc/uts/user namespaces, no network unless the spec allows it,
//! the function's volumes bound read-write at their mount paths (so code
//! opens `/data/...` exactly as on Modal), and death with the runtime.
//!
//! Only what Python needs is visible: `/usr` and the `/bin`, `/lib*` entries,
//! a short list of `/etc` files (name service, TLS roots, time zone, loader
//! cache), the interpreter's own prefix, the function's working directory
//! and its volumes. The runtime's data dir, home and other files are not.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tokio::process::Command;

use crate::compute::BackendError;

/// Whether containers run under bubblewrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// Sandbox when `bwrap` is installed and works; otherwise run containers
    /// as plain processes and say so once in the log (the default).
    #[default]
    Auto,
    /// Refuse to run a container unsandboxed: deploys fail with an error
    /// saying why `bwrap` cannot be used.
    Required,
    /// Never sandbox.
    Off,
}

impl FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(SandboxMode::Auto),
            "required" => Ok(SandboxMode::Required),
            "off" => Ok(SandboxMode::Off),
            _ => Err(format!(
                "invalid sandbox mode {s:?}; expected auto, required or off"
            )),
        }
    }
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxMode::Auto => "auto",
            SandboxMode::Required => "required",
            SandboxMode::Off => "off",
        })
    }
}

/// System directories bound read-only (or recreated as the same symlink).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// `/etc` entries a Python program may need; the rest of `/etc` stays hidden.
const ETC_ENTRIES: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "pki",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
];

/// A working `bwrap` and the read-only system it exposes.
#[derive(Debug)]
pub(crate) struct Bwrap {
    path: PathBuf,
    /// `--ro-bind`/`--symlink` arguments for the system and the interpreter.
    system_args: Vec<String>,
}

impl Bwrap {
    /// Finds and probes `bwrap` per `mode`. `Ok(None)` means run unsandboxed.
    pub(crate) async fn detect(
        mode: SandboxMode,
        configured: Option<&Path>,
        python_roots: &[PathBuf],
    ) -> Result<Option<Arc<Bwrap>>, BackendError> {
        if mode == SandboxMode::Off {
            return Ok(None);
        }
        let candidate = match configured {
            Some(path) => Some(path.to_path_buf()).filter(|p| p.is_file()),
            None => find_in_path("bwrap"),
        };
        let found = match candidate {
            Some(path) => probe(&path).await.map(|()| path),
            None => Err(format!(
                "`{}` (bubblewrap) is not installed",
                configured.map_or("bwrap".into(), |p| p.display().to_string())
            )),
        };
        match found {
            Ok(path) => {
                let bwrap = Bwrap {
                    path,
                    system_args: system_args(python_roots),
                };
                tracing::info!(bwrap = %bwrap.path.display(), "containers run sandboxed");
                Ok(Some(Arc::new(bwrap)))
            }
            Err(why) if mode == SandboxMode::Required => Err(BackendError::Sandbox(format!(
                "the sandbox is required (--sandbox required) but {why}; install bubblewrap \
                 (apt-get install bubblewrap) or choose --sandbox auto|off"
            ))),
            Err(why) => {
                tracing::warn!(
                    %why,
                    "NO SANDBOX: containers run as plain processes with this server's user. \
                     Function code can read and write what the server can (its data dir \
                     included), limits.network=false is not enforced, and limits.processes \
                     only where a pids cgroup can be made. Install bubblewrap \
                     (apt-get install bubblewrap) or serve with --sandbox required to refuse this."
                );
                Ok(None)
            }
        }
    }
}

impl Bwrap {
    /// The `bwrap` executable.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The arguments binding the read-only system and the interpreter.
    pub(crate) fn system_args(&self) -> &[String] {
        &self.system_args
    }
}

/// One function's sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Jail {
    pub(crate) bwrap: Arc<Bwrap>,
    /// Host directory -> path inside, bound read-write.
    pub(crate) binds: Vec<(PathBuf, String)>,
    /// Directories bound read-only at the same path (a package environment).
    pub(crate) read_only: Vec<PathBuf>,
    pub(crate) network: bool,
    pub(crate) gpu: bool,
}

impl Jail {
    /// A command that runs `program` inside the sandbox.
    /// The command starting `program` in this sandbox, seeing only the
    /// GPUs `gpus` (indices) of those the function may use.
    pub(crate) fn command(&self, program: &Path, gpus: &[u32]) -> Command {
        let mut cmd = Command::new(&self.bwrap.path);
        // A session of its own: no controlling terminal to push input into
        // (TIOCSTI) if the operator runs the server from one.
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ]);
        if self.network {
            cmd.arg("--share-net");
        }
        cmd.args(&self.bwrap.system_args);
        // /tmp first: what follows may live under the host's /tmp.
        cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        cmd.args(["--setenv", "HOME", "/tmp"]);
        for dir in &self.read_only {
            cmd.arg("--ro-bind").arg(dir).arg(dir);
        }
        if self.gpu {
            for dev in nvidia_devices(gpus) {
                cmd.arg("--dev-bind").arg(&dev).arg(&dev);
            }
        }
        for (host, inside) in &self.binds {
            cmd.arg("--bind").arg(host).arg(inside);
        }
        cmd.arg("--").arg(program);
        cmd
    }
}

fn system_args(python_roots: &[PathBuf]) -> Vec<String> {
    let mut args = Vec::new();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    args.extend([
                        "--symlink".into(),
                        target.display().to_string(),
                        (*dir).into(),
                    ]);
                }
            }
            Ok(m) if m.is_dir() => args.extend(["--ro-bind".into(), (*dir).into(), (*dir).into()]),
            _ => {}
        }
    }
    for entry in ETC_ENTRIES {
        let path = format!("/etc/{entry}");
        args.extend(["--ro-bind-try".into(), path.clone(), path]);
    }
    for root in python_roots {
        if !root.starts_with("/usr") {
            let root = root.display().to_string();
            args.extend(["--ro-bind".into(), root.clone(), root]);
        }
    }
    args
}

/// The NVIDIA device nodes a container holding GPUs `assigned` may see.
fn nvidia_devices(assigned: &[u32]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let names = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned));
    gpu_nodes(names, assigned)
        .into_iter()
        .map(|n| Path::new("/dev").join(n))
        .collect()
}

/// Of `/dev`'s entries, the shared NVIDIA control nodes (`nvidiactl`,
/// `nvidia-uvm`, ...) and the per-GPU nodes (`nvidiaN`) of `assigned` only:
/// a container never reaches another container's GPU.
fn gpu_nodes(names: impl Iterator<Item = String>, assigned: &[u32]) -> Vec<String> {
    let mut nodes: Vec<String> = names
        .filter(|n| match n.strip_prefix("nvidia") {
            Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) => {
                rest.parse::<u32>().is_ok_and(|i| assigned.contains(&i))
            }
            Some(_) => true,
            None => false,
        })
        .collect();
    nodes.sort();
    nodes
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `bwrap` once with the namespaces containers use.
async fn probe(bwrap: &Path) -> Result<(), String> {
    let out = Command::new(bwrap)
        .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/"])
        .args(["--proc", "/proc", "--dev", "/dev", "--", "true"])
        .env_clear()
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{} cannot run: {e}", bwrap.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} does not work here: {}",
            bwrap.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_sees_only_its_own_gpus() {
        let names = [
            "nvidia0",
            "nvidia1",
            "nvidia12",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-caps",
            "null",
        ]
        .map(str::to_owned);
        assert_eq!(
            gpu_nodes(names.into_iter(), &[1]),
            ["nvidia-caps", "nvidia-uvm", "nvidia1", "nvidiactl"]
        );
    }

    #[test]
    fn modes_parse_and_name_what_is_accepted() {
        assert_eq!("AUTO".parse::<SandboxMode>(), Ok(SandboxMode::Auto));
        assert_eq!("required".parse::<SandboxMode>(), Ok(SandboxMode::Required));
        assert_eq!(SandboxMode::Off.to_string().parse(), Ok(SandboxMode::Off));
        let err = "on".parse::<SandboxMode>().unwrap_err();
        assert!(
            err.contains("\"on\"") && err.contains("auto, required or off"),
            "{err}"
        );
    }

    #[test]
    fn system_args_hide_etc_and_bind_the_interpreter() {
        let args = system_args(&[PathBuf::from("/opt/python")]);
        assert!(args
            .windows(3)
            .any(|w| w == ["--ro-bind", "/opt/python", "/opt/python"]));
        assert!(!args.iter().any(|a| a == "/etc" || a == "/etc/shadow"));
        assert!(args.iter().any(|a| a == "/etc/ssl"));
    }
}
