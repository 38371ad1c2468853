//! What a request carries of a per-request plugin instance between its two hooks
//! (`instance = "per-request"`): a slot of the engine's instance pool, bounded by
//! `max_held_instances`, and the instance itself, opaque. A leaf: the request (`host.rs`)
//! carries it without depending on how instances are made and called (`loaded.rs`), so the
//! crate's modules form no cycle through it.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::gauge::Gauge;

/// The per-request instances a runtime holds across upstream calls (from a request's
/// `on-request` to its `on-response`), all its plugins together. Each holds a slot of the
/// engine's instance pool ([`super::engine::POOL_COMPONENT_INSTANCES`]) while the upstream
/// answers: at most `cap` are held, so requests waiting on slow upstreams cannot take the
/// slots other requests need to instantiate. Past the cap, a request's instance is dropped
/// after `on-request` and its `on-response` gets a fresh one (counted per plugin in
/// `sluice_plugin_held_instance_fallbacks_total`).
#[derive(Debug)]
pub struct InstanceSlots {
    cap: usize,
    /// The count (`sluice_plugin_held_instances`).
    held: Gauge,
}

impl InstanceSlots {
    /// At most `cap` held at once (0: none, each hook gets its own fresh instance), counted in
    /// `held`.
    pub fn new(cap: usize, held: Gauge) -> Arc<Self> {
        Arc::new(Self { cap, held })
    }

    /// Instances held now.
    pub fn held(&self) -> usize {
        usize::try_from(self.held.get()).unwrap_or_default()
    }

    /// A slot, unless `cap` are held.
    pub(crate) fn try_hold(self: &Arc<Self>) -> Option<HeldSlot> {
        let cap = i64::try_from(self.cap).unwrap_or(i64::MAX);
        self.held
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        Some(HeldSlot(self.clone()))
    }
}

/// One held slot of [`InstanceSlots`], given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldSlot(Arc<InstanceSlots>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.held.dec();
    }
}

/// A per-request instance kept in its request ([`crate::host::RequestState::held`]) from the
/// plugin's `on-request` for its `on-response`, with its slot. Whichever way the request ends
/// (its `on-response` takes it; a request dropped before, when the client goes away, drops
/// it), the slot is freed. The instance is opaque here: `loaded.rs` puts it in and takes it
/// out, so the request's type does not depend on the instance's.
pub struct Held {
    /// The address of the plugin that holds it (its `PluginShared`, which the instance keeps
    /// alive, so no other plugin can have that address meanwhile).
    owner: usize,
    instance: Box<dyn Any + Send>,
    _slot: HeldSlot,
}

impl Held {
    pub(crate) fn new<T: Any + Send>(owner: usize, instance: T, slot: HeldSlot) -> Self {
        Self {
            owner,
            instance: Box::new(instance),
            _slot: slot,
        }
    }

    /// The plugin that holds it.
    pub(crate) fn owner(&self) -> usize {
        self.owner
    }

    /// The instance, freeing its slot.
    pub(crate) fn into_instance<T: Any>(self) -> Option<T> {
        self.instance.downcast().ok().map(|instance| *instance)
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("owner", &self.owner).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most `cap` slots are held at once; a dropped slot is free again, and the gauge
    /// follows the count.
    #[test]
    fn held_slots_stop_at_the_cap_and_come_back_when_dropped() {
        let slots = InstanceSlots::new(2, Gauge::default());
        let first = slots.try_hold().expect("a first slot");
        let second = slots.try_hold().expect("a second slot");
        assert!(slots.try_hold().is_none(), "past the cap");
        assert_eq!((slots.held(), slots.held.get()), (2, 2));
        drop(first);
        assert_eq!(slots.held(), 1);
        let third = slots.try_hold().expect("the freed slot");
        drop((second, third));
        assert_eq!(slots.held(), 0);

        let none = InstanceSlots::new(0, Gauge::default());
        assert!(none.try_hold().is_none(), "0: never held");
        assert_eq!(none.held(), 0);
    }

    #[test]
    fn a_held_instance_is_given_back_only_as_its_own_type() {
        let slots = InstanceSlots::new(1, Gauge::default());
        let held = Held::new(7, String::from("instance"), slots.try_hold().unwrap());
        assert_eq!(held.owner(), 7);
        assert_eq!(held.into_instance::<u32>(), None, "another type");
        assert_eq!(slots.held(), 0, "the slot is freed either way");
        let held = Held::new(7, String::from("instance"), slots.try_hold().unwrap());
        assert_eq!(held.into_instance::<String>().as_deref(), Some("instance"));
    }
}
