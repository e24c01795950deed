//! `[quotas]`: the warnings a quota gives as it is used, and the blocks replicas lease from the
//! store when quotas are not shared through Redis. Raw section, validation and the typed
//! value, kept together (like `[leaks]`).

use std::time::Duration;

use serde::Deserialize;

use super::raw::Field;
use super::validate::Checker;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuotas {
    /// Shares of a quota's allowance, each in (0, 1], ascending, no repeats: when a period's use
    /// reaches one, a warning goes out once. Default [`Quotas::DEFAULT_WARN_AT`]; `[]`: none.
    pub warn_at: Field<Vec<f64>>,
    /// Share of a quota's allowance a replica leases from the store at a time, in (0, 1]
    /// (at least 1 unit). Default [`Quotas::DEFAULT_LEASE_BLOCK`].
    pub lease_block: Field<f64>,
    /// How long a replica keeps a leased block before it gives back what it did not spend.
    /// Default [`Quotas::DEFAULT_LEASE_TTL`].
    pub lease_ttl: Field<String>,
}

/// `[quotas]`, validated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quotas {
    /// Ascending shares of the allowance, each in (0, 1].
    pub warn_at: Vec<f64>,
    /// Share of the allowance leased at a time.
    pub lease_block: f64,
    /// Lifetime of a leased block.
    pub lease_ttl: Duration,
}

impl Quotas {
    pub const DEFAULT_WARN_AT: [f64; 2] = [0.8, 1.0];
    /// A twentieth: a fleet of N replicas overshoots by at most N/20 of the allowance.
    pub const DEFAULT_LEASE_BLOCK: f64 = 0.05;
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

    /// The units of a block of a quota whose allowance is `allowance`: at least one, at least
    /// `cost`.
    pub fn block_of(&self, allowance: u64, cost: u64) -> u64 {
        let share = (allowance as f64 * self.lease_block).ceil() as u64;
        share.max(1).max(cost)
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            warn_at: Quotas::DEFAULT_WARN_AT.to_vec(),
            lease_block: Quotas::DEFAULT_LEASE_BLOCK,
            lease_ttl: Quotas::DEFAULT_LEASE_TTL,
        }
    }
}

pub(super) fn quotas(checker: &mut Checker, raw: &RawQuotas) -> Quotas {
    let warn_at = checker
        .parsed(&raw.warn_at, "quotas.warn_at", |shares| warn_at(shares))
        .unwrap_or_else(|| Quotas::DEFAULT_WARN_AT.to_vec());
    let lease_block = checker
        .parsed(&raw.lease_block, "quotas.lease_block", |&share| share_of(share))
        .unwrap_or(Quotas::DEFAULT_LEASE_BLOCK);
    let lease_ttl = checker.duration_or(&raw.lease_ttl, "quotas.lease_ttl", Quotas::DEFAULT_LEASE_TTL);
    Quotas {
        warn_at,
        lease_block,
        lease_ttl,
    }
}

/// A share of an allowance: above 0, at most 1.
fn share_of(share: f64) -> Result<f64, String> {
    if share > 0.0 && share <= 1.0 {
        Ok(share)
    } else {
        Err(format!("{share} is not above 0 and at most 1"))
    }
}

fn warn_at(shares: &[f64]) -> Result<Vec<f64>, String> {
    for share in shares {
        share_of(*share)?;
    }
    if shares.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("must be in ascending order, without repeats".to_owned());
    }
    if shares.len() > 16 {
        return Err("takes at most 16 shares".to_owned());
    }
    Ok(shares.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_at_takes_ascending_shares_up_to_one() {
        assert_eq!(warn_at(&[0.5, 0.8, 1.0]), Ok(vec![0.5, 0.8, 1.0]));
        assert_eq!(warn_at(&[]), Ok(vec![]));
        for bad in [&[0.0][..], &[1.5], &[-0.1], &[0.8, 0.5], &[0.8, 0.8], &[f64::NAN]] {
            assert!(warn_at(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_block_is_a_share_of_the_allowance_at_least_one_unit_and_the_cost() {
        let quotas = Quotas::default();
        assert_eq!(quotas.block_of(100_000, 1), 5_000);
        assert_eq!(quotas.block_of(3, 1), 1);
        assert_eq!(quotas.block_of(3, 7), 7);
        assert_eq!(quotas.block_of(0, 1), 1);
    }
}
