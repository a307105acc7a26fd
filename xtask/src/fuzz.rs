//! Run the fuzz targets for a bounded time.

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet (root: {})", crate::project_root().display())
}
