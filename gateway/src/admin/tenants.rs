//! `GET /admin/tenants`: every tenant's limits and live state (in flight here, spend today,
//! budget left), never their keys; and the per-tenant spend gauges refreshed at scrape.

use super::json_response;
use crate::admit::Limiter;
use crate::policy::RoutingTable;
use crate::telemetry as t;
use http::{Response, StatusCode};
use serde_json::json;

pub(super) async fn list(limiter: &Limiter, table: &RoutingTable) -> Response<Vec<u8>> {
    let tenants = limiter.report(table).await;
    json_response(
        StatusCode::OK,
        &json!({
            "auth": match table.auth {
                crate::policy::tenancy::AuthMode::Optional => "optional",
                crate::policy::tenancy::AuthMode::Required => "required",
            },
            "backend": limiter.backend(),
            "instances": table.limits.admission.instances,
            "tenants": tenants,
        }),
    )
}

/// Spend today and budget left, per tenant with limits.
pub(super) async fn refresh_gauges(limiter: &Limiter, table: &RoutingTable) {
    for r in limiter.report(table).await {
        if r.spend_per_day_usd.is_none() && r.spend_today_usd == 0.0 {
            continue;
        }
        metrics::gauge!(t::TENANT_SPEND, "tenant" => r.name.clone()).set(r.spend_today_usd);
        if let Some(left) = r.budget_remaining_usd {
            metrics::gauge!(t::TENANT_BUDGET_REMAINING, "tenant" => r.name).set(left);
        }
    }
}
