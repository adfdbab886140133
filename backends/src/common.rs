//! Small helpers shared by the backends.

use std::collections::BTreeSet;

use sync_traits::Fields;

/// The names of fields whose values differ between `old` and `new` (same rule as
/// the reference store).
pub(crate) fn changed_fields(old: Option<&Fields>, new: Option<&Fields>) -> BTreeSet<String> {
    let empty = Fields::new();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let mut out = BTreeSet::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone());
        }
    }
    out
}
