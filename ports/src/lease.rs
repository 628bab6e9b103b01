use crate::StoreError;
use async_trait::async_trait;

/// Grants named, exclusive leases: at most one holder per name at a time (one active relay per
/// checkpoint).
#[async_trait]
pub trait LeaseProvider: Send + Sync {
    /// Tries once to take the lease `name` for `holder` (a description shown by `status`).
    /// `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>, StoreError>;

    /// Who holds the lease `name`, if anyone.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError>;
}

/// A held lease. Dropping it releases it.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Resolves as soon as the lease is known to be lost (its backing connection died). The
    /// holder must stop acting at once. Cancel-safe.
    async fn lost(&self);

    /// Whether the lease is still held, as far as is known now.
    fn is_held(&self) -> bool;
}
