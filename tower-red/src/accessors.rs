//! [`define_inner_service_accessors!`](crate::define_inner_service_accessors): the accessors
//! every service of this workspace has, written once.

/// Defines `get_ref`, `get_mut` and `into_inner` on a service whose inner service is in the
/// field `inner`; use inside an `impl` block.
///
/// ```
/// struct Wrapper<S> {
///     inner: S,
/// }
///
/// impl<S> Wrapper<S> {
///     tower_red::define_inner_service_accessors!();
/// }
///
/// let w = Wrapper { inner: 7 };
/// assert_eq!(*w.get_ref(), 7);
/// assert_eq!(w.into_inner(), 7);
/// ```
#[macro_export]
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
