//! The test PKI: the test kit's CA, with the e2e's error type. Its leaves
//! carry every file certbot lays out in `/etc/letsencrypt/live/NAME/`.

use std::ops::Deref;

use anyhow::Context;

pub(crate) use lunch_testkit::Leaf;

/// A certificate authority trusted only by the e2e clients.
pub(crate) struct TestCa(lunch_testkit::TestCa);

impl TestCa {
    pub(crate) fn new() -> anyhow::Result<TestCa> {
        lunch_testkit::TestCa::try_new()
            .map(TestCa)
            .context("making the test CA")
    }

    /// A leaf for `name`, valid now, with serial number `serial`.
    pub(crate) fn issue(&self, name: &str, serial: u64) -> anyhow::Result<Leaf> {
        self.0
            .try_issue_with(&[name], serial, |_| {})
            .with_context(|| format!("issuing a test certificate for {name}"))
    }
}

/// The CA's `pem` and `der`.
impl Deref for TestCa {
    type Target = lunch_testkit::TestCa;

    fn deref(&self) -> &lunch_testkit::TestCa {
        &self.0
    }
}
