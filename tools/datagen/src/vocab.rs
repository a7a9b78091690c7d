//! The vocabularies of the dataset (countries, cities, paths, SKUs, ...) and
//! their skewed distributions.
//!
//! Small fixed lists are `static` arrays. Lists generated from a pattern
//! (cities, SKUs, campaigns, ...) are built once into [`tables`], a process
//! global, so that generated values borrow `&'static str` from it and a
//! profile allocates no string for them.

use std::sync::OnceLock;

use crate::rng::Rng;

/// The 50 countries (ISO 3166-1 alpha-2), most frequent first. Country rank
/// `r` has weight `1 / (r + 1.1)`: the first takes about 20 %.
pub const COUNTRIES: [&str; 50] = [
    "US", "GB", "FR", "DE", "CA", "ES", "IT", "NL", "BR", "AU", "IN", "JP", "MX", "SE", "BE", "CH", "PL",
    "IE", "AT", "DK", "NO", "FI", "PT", "NZ", "SG", "KR", "AR", "CL", "CO", "ZA", "IL", "AE", "TR", "CZ",
    "GR", "HU", "RO", "UA", "PH", "ID", "MY", "TH", "VN", "EG", "NG", "KE", "SA", "PE", "HK", "LU",
];

/// Countries of [`COUNTRIES`] that pay in euros (purchases there use `EUR`).
pub const EURO_COUNTRIES: [&str; 12] =
    ["FR", "DE", "ES", "IT", "NL", "BE", "IE", "AT", "FI", "PT", "GR", "LU"];

/// Plans and their cumulative probabilities (60 %, 25 %, 12 %, 3 %).
pub const PLANS: [(&str, f64); 4] = [("free", 0.60), ("basic", 0.85), ("pro", 0.97), ("enterprise", 1.0)];

/// E-mail domains and their weights.
pub const EMAIL_DOMAINS: [(&str, f64); 10] = [
    ("gmail.com", 35.0),
    ("yahoo.com", 12.0),
    ("outlook.com", 12.0),
    ("hotmail.com", 10.0),
    ("icloud.com", 10.0),
    ("example.com", 6.0),
    ("proton.me", 5.0),
    ("gmx.de", 4.0),
    ("fastmail.com", 3.0),
    ("aol.com", 3.0),
];

/// The 20 tags, most frequent first (picked Zipf-like by rank).
pub const TAGS: [&str; 20] = [
    "newsletter_2024",
    "vip",
    "beta",
    "churn_risk",
    "early_adopter",
    "mobile_first",
    "discount_seeker",
    "cart_abandoner",
    "high_value",
    "newsletter_2025",
    "loyalty_silver",
    "referral",
    "app_user",
    "holiday_shopper",
    "win_back",
    "loyalty_gold",
    "student",
    "survey_responder",
    "support_ticket",
    "b2b",
];

/// Event names and their cumulative probabilities
/// (35 %, 25 %, 12 %, 6 %, 15 %, 7 %).
pub const EVENTS: [(&str, f64); 6] = [
    ("page", 0.35),
    ("app_open", 0.60),
    ("add_to_cart", 0.72),
    ("purchase", 0.78),
    ("email_open", 0.93),
    ("email_click", 1.0),
];

/// Page referrers, most frequent first (picked Zipf-like by rank).
pub const REFERRERS: [&str; 10] = [
    "direct",
    "google.com",
    "newsletter",
    "facebook.com",
    "instagram.com",
    "bing.com",
    "twitter.com",
    "linkedin.com",
    "reddit.com",
    "youtube.com",
];

/// App platforms and their cumulative probabilities (45 %, 40 %, 15 %).
pub const PLATFORMS: [(&str, f64); 3] = [("ios", 0.45), ("android", 0.85), ("web", 1.0)];

/// Purchase categories, most frequent first (picked Zipf-like by rank).
pub const CATEGORIES: [&str; 12] = [
    "clothing",
    "shoes",
    "electronics",
    "books",
    "home",
    "beauty",
    "sports",
    "toys",
    "grocery",
    "jewelry",
    "garden",
    "music",
];

/// Site pages that are not generated from a pattern.
const BASE_PATHS: [&str; 16] = [
    "/",
    "/pricing",
    "/search",
    "/cart",
    "/checkout",
    "/account",
    "/account/orders",
    "/login",
    "/signup",
    "/features",
    "/blog",
    "/help",
    "/about",
    "/contact",
    "/docs",
    "/careers",
];

/// Campaign themes; each has three variants, 30 campaigns in all.
const CAMPAIGN_THEMES: [&str; 10] = [
    "welcome",
    "newsletter",
    "spring_sale",
    "summer_sale",
    "back_to_school",
    "black_friday",
    "cyber_monday",
    "holiday",
    "win_back",
    "product_launch",
];

/// Number of distinct page paths.
pub const PATH_COUNT: usize = 50;
/// Number of distinct SKUs.
pub const SKU_COUNT: usize = 1000;
/// Number of distinct e-mail links.
pub const LINK_COUNT: usize = 20;

/// Vocabularies built from patterns, with their cumulative weight tables.
#[derive(Debug)]
pub struct Tables {
    /// Cumulative weights over [`COUNTRIES`].
    pub country_cumulative: Vec<f64>,
    /// Whether each country of [`COUNTRIES`] pays in euros.
    pub country_is_euro: Vec<bool>,
    /// City names per country, `{country}-city-{k}`, most frequent first.
    pub cities: Vec<Vec<String>>,
    /// Cumulative weights over [`EMAIL_DOMAINS`].
    pub domain_cumulative: Vec<f64>,
    /// Page paths, most frequent first.
    pub paths: Vec<String>,
    /// SKUs `SKU-0000`..`SKU-0999`, most frequent first.
    pub skus: Vec<String>,
    /// The price of each SKU, a 2-decimal number fixed by the SKU.
    pub sku_prices: Vec<f64>,
    /// E-mail campaigns `{theme}_{n}`.
    pub campaigns: Vec<String>,
    /// Links clicked in e-mails.
    pub links: Vec<String>,
}

/// Number of cities of the country of rank `rank`: 30 plus a share that
/// decreases with the rank, about 4,200 cities over the 50 countries.
pub fn city_count(rank: usize) -> usize {
    30 + 600 / (rank + 1)
}

/// Rounds to 2 decimals (cents).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    weights
        .into_iter()
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

fn build() -> Tables {
    let cities = COUNTRIES
        .iter()
        .enumerate()
        .map(|(rank, c)| (0..city_count(rank)).map(|k| format!("{c}-city-{k}")).collect())
        .collect();
    let mut paths: Vec<String> = BASE_PATHS.iter().map(|p| (*p).to_owned()).collect();
    paths.extend(CATEGORIES.iter().map(|c| format!("/c/{c}")));
    let mut k = 0;
    while paths.len() < PATH_COUNT {
        paths.push(format!("/p/{k}"));
        k += 1;
    }
    let skus = (0..SKU_COUNT).map(|k| format!("SKU-{k:04}")).collect();
    // A SKU's price is a fixed function of the SKU (its own seeded RNG), so
    // every add_to_cart of one SKU carries the same price.
    let sku_prices = (0..SKU_COUNT as u64)
        .map(|k| round2(Rng::for_item(0x5C0_u64, k).log_normal(30.0, 0.9).clamp(1.0, 2000.0)))
        .collect();
    let campaigns = CAMPAIGN_THEMES.iter().flat_map(|t| (1..=3).map(move |n| format!("{t}_{n}"))).collect();
    let links = (0..LINK_COUNT)
        .map(|k| format!("https://shop.example.com{}?utm_medium=email", paths[k % paths.len()]))
        .collect();
    Tables {
        country_cumulative: cumulative((0..COUNTRIES.len()).map(|r| 1.0 / (r as f64 + 1.1))),
        country_is_euro: COUNTRIES.iter().map(|c| EURO_COUNTRIES.contains(c)).collect(),
        cities,
        domain_cumulative: cumulative(EMAIL_DOMAINS.iter().map(|d| d.1)),
        paths,
        skus,
        sku_prices,
        campaigns,
        links,
    }
}

/// The process-wide vocabulary tables, built on first use.
pub fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(build)
}

/// The value of `table` (pairs of a value and its cumulative probability,
/// the last 1.0) chosen by one uniform draw.
pub fn pick<T: Copy>(rng: &mut Rng, table: &[(T, f64)]) -> T {
    let x = rng.f64();
    table.iter().find(|e| x < e.1).unwrap_or(&table[table.len() - 1]).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_have_the_documented_sizes() {
        let t = tables();
        let mut countries = COUNTRIES.to_vec();
        countries.sort_unstable();
        countries.dedup();
        assert_eq!(countries.len(), 50);
        let cities: usize = t.cities.iter().map(Vec::len).sum();
        assert!((3000..=5000).contains(&cities), "{cities} cities");
        assert_eq!(t.paths.len(), PATH_COUNT);
        let mut paths = t.paths.clone();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), PATH_COUNT);
        assert_eq!(t.campaigns.len(), 30);
        assert!(t.sku_prices.iter().all(|&p| (1.0..=2000.0).contains(&p) && round2(p) == p));
        assert_eq!(PLANS[PLANS.len() - 1].1, 1.0);
        assert_eq!(EVENTS[EVENTS.len() - 1].1, 1.0);
        assert_eq!(PLATFORMS[PLATFORMS.len() - 1].1, 1.0);
    }
}
