//! Bookkeeping shared by the per-device collectors (disks, NICs): a name-sorted list of
//! devices with their previous counters, kept across ticks so that a device that
//! appears gets NaN rates on its first tick and one that disappears is simply dropped,
//! and a copy into the sample's device list that reuses its `String`s. Nothing here
//! allocates unless the set of devices changes.

use persona_shared::sample::Device;

/// A device and the collector's state for it.
pub(crate) struct Named<S> {
    pub name: String,
    /// Set when the device was in this tick's file; unseen devices are dropped.
    pub seen: bool,
    pub state: S,
}

/// The devices a collector knows, sorted by name.
pub(crate) struct Registry<S> {
    items: Vec<Named<S>>,
    /// Bumped whenever a device appears or disappears (the host facts may have changed).
    pub generation: u64,
}

impl<S> Registry<S> {
    pub(crate) fn new() -> Self {
        Self {
            items: Vec::new(),
            generation: 0,
        }
    }

    /// Starts a tick: every device is unseen until its line is read.
    pub(crate) fn begin(&mut self) {
        for i in &mut self.items {
            i.seen = false;
        }
    }

    /// The device called `name`, created with `make` when it is new (the only place a
    /// tick can allocate: a device appeared).
    pub(crate) fn entry(&mut self, name: &str, make: impl FnOnce(&str) -> S) -> &mut Named<S> {
        let pos = match self.items.binary_search_by(|n| n.name.as_str().cmp(name)) {
            Ok(p) => p,
            Err(p) => {
                self.items.insert(
                    p,
                    Named {
                        name: name.to_owned(),
                        seen: false,
                        state: make(name),
                    },
                );
                self.generation += 1;
                p
            }
        };
        let item = &mut self.items[pos];
        item.seen = true;
        item
    }

    /// Ends a tick: drops the devices that were not seen.
    pub(crate) fn end(&mut self) {
        let before = self.items.len();
        self.items.retain(|i| i.seen);
        if self.items.len() != before {
            self.generation += 1;
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Named<S>> {
        self.items.iter()
    }
}

/// Copies `(name, values)` pairs into a sample's device list in place: an entry whose
/// name is unchanged keeps its `String`, so a steady set of devices costs no allocation.
pub(crate) fn copy_out<'a, const N: usize>(
    src: impl Iterator<Item = (&'a str, &'a [f64; N])>,
    out: &mut Vec<Device<N>>,
) {
    let mut n = 0;
    for (name, values) in src {
        match out.get_mut(n) {
            Some(d) => {
                if d.name != name {
                    d.name.clear();
                    d.name.push_str(name);
                }
                d.values = *values;
            }
            None => out.push(Device {
                name: name.to_owned(),
                values: *values,
            }),
        }
        n += 1;
    }
    out.truncate(n);
}

/// Sum of the finite values; NaN when none is finite (no device had a rate this tick).
pub(crate) fn finite_sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut sum = 0.0;
    let mut any = false;
    for v in values.filter(|v| v.is_finite()) {
        sum += v;
        any = true;
    }
    if any { sum } else { f64::NAN }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_tracks_appearing_and_disappearing_devices() {
        let mut r: Registry<u32> = Registry::new();
        r.begin();
        r.entry("b", |_| 1);
        r.entry("a", |_| 2);
        r.end();
        assert_eq!(
            r.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let g = r.generation;
        r.begin();
        r.entry("a", |_| 9).state += 1;
        r.end();
        assert_eq!(
            r.iter()
                .map(|n| (n.name.as_str(), n.state))
                .collect::<Vec<_>>(),
            [("a", 3)]
        );
        assert_eq!(r.generation, g + 1);
    }

    #[test]
    fn copy_out_reuses_names() {
        let mut out: Vec<Device<1>> = Vec::new();
        let v = [1.0];
        copy_out([("a", &v), ("b", &v)].into_iter(), &mut out);
        let ptr = out[0].name.as_ptr();
        copy_out([("a", &v)].into_iter(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name.as_ptr(), ptr);
        assert!(finite_sum([f64::NAN].into_iter()).is_nan());
        assert_eq!(finite_sum([f64::NAN, 2.0, 3.0].into_iter()), 5.0);
    }
}
