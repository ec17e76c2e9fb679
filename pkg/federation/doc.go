// Package federation keeps the bundles of foreign trust domains: it fetches
// each from its SPIFFE bundle endpoint (https_web or https_spiffe), checks
// it, stores it, and fetches it again at its refresh hint. A bundle that
// fails any check is rejected with the reason and the last good one is kept.
// Bundles of different trust domains are never merged.
package federation
