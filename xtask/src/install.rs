//! Install lunchd's binary, units and example configuration.

/// Arguments of install-units.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {}

/// Arguments of uninstall-units.
#[derive(Debug, clap::Args)]
pub(crate) struct UninstallArgs {}

pub(crate) fn install(_args: InstallArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

pub(crate) fn uninstall(_args: UninstallArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
