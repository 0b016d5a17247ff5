//! `PUT /boot-source`: the kernel, its initrd and its command line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{open_regular, ConfigError, OpenRegularError};
use crate::vmm::arch::x86_64::boot::kernel_cmdline;

/// Kernel arguments used when `boot_args` is not given.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

fn check_readable(what: &'static str, path: &str) -> Result<(), ConfigError> {
    let err = |err: String| ConfigError::File {
        what,
        path: crate::text::echo(path).into_owned(),
        err,
    };
    match open_regular(Path::new(path)) {
        Ok(_) => Ok(()),
        Err(OpenRegularError::NotRegular) => Err(err("not a regular file".into())),
        Err(OpenRegularError::Io(e)) => Err(err(e.to_string())),
    }
}

impl BootSourceConfig {
    pub fn boot_args(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_readable("kernel image", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_readable("initrd", initrd)?;
        }
        kernel_cmdline(self.boot_args()).map_err(|e| ConfigError::BootArgs(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::arch::x86_64::layout::CMDLINE_MAX_SIZE;

    #[test]
    fn boot_source_checks_files_and_args() {
        let missing = BootSourceConfig {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            ..Default::default()
        };
        let e = missing.validate().unwrap_err().to_string();
        assert!(e.contains("kernel image /nonexistent/vmlinux"), "{e}");
        let dir = BootSourceConfig {
            kernel_image_path: "/".into(),
            ..Default::default()
        };
        assert!(dir
            .validate()
            .unwrap_err()
            .to_string()
            .contains("regular file"));
        let me = std::env::current_exe().unwrap().display().to_string();
        let bad_args = BootSourceConfig {
            kernel_image_path: me.clone(),
            boot_args: Some("console=ttyS0\u{1}".into()),
            ..Default::default()
        };
        assert!(matches!(bad_args.validate(), Err(ConfigError::BootArgs(_))));
        let long_args = BootSourceConfig {
            kernel_image_path: me,
            boot_args: Some("a".repeat(CMDLINE_MAX_SIZE)),
            ..Default::default()
        };
        assert!(matches!(
            long_args.validate(),
            Err(ConfigError::BootArgs(_))
        ));
    }
}
