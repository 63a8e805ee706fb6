//! The names of the shared books' `spend` rows: which budget scope (the
//! app, one key, one end customer) and which window (a UTC day, a calendar
//! month, all time) a booked charge counts in.
//!
//! This is the one place their text form is written and read: the
//! coordinator names the rows a hold checks and a commit adds to with
//! [`SpendScope`] and [`SpendWindow`], the shared books (`pg.rs`) encode them into the
//! `scope` and `win` columns and parses them back, and the SQL migration
//! that creates the table points here. The strings are stored data: they
//! must never change.

/// Who a spend row counts for, within one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpendScope {
    /// The whole app: `a`.
    App,
    /// One API key, by key id: `k:<key id>`.
    Key(String),
    /// One end customer of the app: `c:<end customer>`.
    Customer(String),
}

impl SpendScope {
    /// The `scope` column's text.
    pub fn encode(&self) -> String {
        match self {
            Self::App => "a".into(),
            Self::Key(k) => format!("k:{k}"),
            Self::Customer(c) => format!("c:{c}"),
        }
    }

    /// The scope a `scope` column's text names; `None` for text that
    /// [`SpendScope::encode`] never writes.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "a" {
            return Some(Self::App);
        }
        if let Some(k) = s.strip_prefix("k:") {
            return Some(Self::Key(k.into()));
        }
        s.strip_prefix("c:").map(|c| Self::Customer(c.into()))
    }
}

/// Which period a spend row sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpendWindow {
    /// One UTC day, by day number (ms / 86 400 000): `d<n>`.
    Day(u64),
    /// One calendar month, by the ms its first day starts: `m<ms>`.
    Month(u64),
    /// All time: `t`.
    Total,
}

impl SpendWindow {
    /// The `win` column's text.
    pub fn encode(&self) -> String {
        match self {
            Self::Day(d) => format!("d{d}"),
            Self::Month(m) => format!("m{m}"),
            Self::Total => "t".into(),
        }
    }

    /// The window a `win` column's text names; `None` for text that
    /// [`SpendWindow::encode`] never writes (numbers are canonical: no
    /// sign, no leading zeros).
    pub fn parse(s: &str) -> Option<Self> {
        let number = |n: &str| {
            let v: u64 = n.parse().ok()?;
            (v.to_string() == n).then_some(v)
        };
        if s == "t" {
            return Some(Self::Total);
        }
        if let Some(d) = s.strip_prefix('d') {
            return number(d).map(Self::Day);
        }
        s.strip_prefix('m').and_then(number).map(Self::Month)
    }
}

/// One spend row of an app: a scope in a window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpendKey {
    pub scope: SpendScope,
    pub window: SpendWindow,
}

impl SpendKey {
    /// The row `('a', 't')`: everything the app was ever charged.
    pub const APP_TOTAL: SpendKey = SpendKey {
        scope: SpendScope::App,
        window: SpendWindow::Total,
    };

    pub fn new(scope: SpendScope, window: SpendWindow) -> Self {
        Self { scope, window }
    }

    /// The `(scope, win)` columns' text.
    pub fn encode(&self) -> (String, String) {
        (self.scope.encode(), self.window.encode())
    }

    /// The key the `(scope, win)` columns name, if both are well formed.
    pub fn parse(scope: &str, window: &str) -> Option<Self> {
        Some(Self {
            scope: SpendScope::parse(scope)?,
            window: SpendWindow::parse(window)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact strings stored in PostgreSQL: changing one would orphan
    /// every row written before.
    #[test]
    fn the_stored_strings_are_exactly_these() {
        let cases = [
            (SpendKey::APP_TOTAL, ("a", "t")),
            (
                SpendKey::new(
                    SpendScope::Key("key_0123456789ab".into()),
                    SpendWindow::Day(20_000),
                ),
                ("k:key_0123456789ab", "d20000"),
            ),
            (
                SpendKey::new(
                    SpendScope::Customer("alice:b".into()),
                    SpendWindow::Month(1_704_067_200_000),
                ),
                ("c:alice:b", "m1704067200000"),
            ),
            (
                SpendKey::new(SpendScope::App, SpendWindow::Day(0)),
                ("a", "d0"),
            ),
            (
                SpendKey::new(SpendScope::Customer(String::new()), SpendWindow::Total),
                ("c:", "t"),
            ),
        ];
        for (key, (scope, win)) in cases {
            assert_eq!(key.encode(), (scope.to_string(), win.to_string()));
            assert_eq!(SpendKey::parse(scope, win), Some(key));
        }
    }

    #[test]
    fn every_key_round_trips() {
        let scopes = [
            SpendScope::App,
            SpendScope::Key("k".into()),
            SpendScope::Key("k:with:colons".into()),
            SpendScope::Customer("a".into()),
            SpendScope::Customer("k:looks-like-a-key".into()),
            SpendScope::Customer("ünïcode and spaces".into()),
        ];
        let windows = [
            SpendWindow::Day(0),
            SpendWindow::Day(u64::MAX),
            SpendWindow::Month(0),
            SpendWindow::Month(1_706_745_600_000),
            SpendWindow::Total,
        ];
        for scope in &scopes {
            for window in windows {
                let key = SpendKey::new(scope.clone(), window);
                let (s, w) = key.encode();
                assert_eq!(SpendKey::parse(&s, &w), Some(key));
            }
        }
    }

    #[test]
    fn text_never_written_does_not_parse() {
        for scope in ["", "A", "k", "c", "x:1", "a:"] {
            assert_eq!(SpendScope::parse(scope), None, "{scope:?}");
        }
        for win in ["", "T", "d", "m", "d-1", "d+1", "d01", "m 5", "w3", "t0"] {
            assert_eq!(SpendWindow::parse(win), None, "{win:?}");
        }
    }
}
