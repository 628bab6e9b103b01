use crate::StoreError;
use async_trait::async_trait;

/// Grants named, exclusive leases: at most one holder per name at a time (one active relay per
/// checkpoint).
///
/// # What a lease guarantees
///
/// A lease is taken for a time to live and expires unless its holder keeps renewing it; an
/// implementation must not tie it to anything that can outlive a dead holder (a database
/// session survives its client's host for as long as TCP, or a proxy in between, keeps it).
/// The holder gives up, and [`Lease::lost`] resolves, *before* anyone else can take the lease:
/// a holder that keeps acting only while [`Lease::is_held`] is true never overlaps its
/// successor. A standby takes over within about one time to live of the holder going silent.
///
/// Each takeover has an [`epoch`](Lease::epoch), greater than every epoch handed out before for
/// that name: a fencing token callers can log or store beside what they write.
#[async_trait]
pub trait LeaseProvider: Send + Sync {
    /// Tries once to take the lease `name` for `holder` (a description shown by `status`).
    /// `Ok(None)` when someone else holds it and it has not expired.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>, StoreError>;

    /// Who holds the lease `name`, if anyone (an expired lease has no holder).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError>;
}

/// A held lease, renewed in the background while it is held. Dropping it releases it (best
/// effort: if the release cannot reach the store, the lease simply expires).
#[async_trait]
pub trait Lease: Send + Sync {
    /// Resolves as soon as the lease is lost: it could not be renewed in time (with a margin
    /// before it would expire), or it was found expired or taken over. The holder must stop
    /// acting at once. Once lost, a lease stays lost. Cancel-safe.
    async fn lost(&self);

    /// Whether the lease is still held, as far as is known now.
    fn is_held(&self) -> bool;

    /// The fencing token of this tenure: incremented at every takeover of the lease's name,
    /// never reused. Greater means later.
    fn epoch(&self) -> u64;
}
