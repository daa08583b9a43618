//! The gRPC face: Envoy's `RateLimitService` (RLS v3) and `flashsale.v1.Limiter`.

use std::time::Duration;

use flashsale_proto::{
    envoy::{
        config::core::v3::HeaderValue,
        extensions::common::ratelimit::v3::RateLimitDescriptor,
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse,
            rate_limit_response::{self, DescriptorStatus, rate_limit::Unit as ResponseUnit},
            rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
        },
        r#type::v3::RateLimitUnit,
    },
    v1::{
        ListRulesRequest, ListRulesResponse, ReloadRulesRequest, RuleView,
        limiter_server::{Limiter as LimiterRpc, LimiterServer},
    },
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};
use tonic::{Request, Response, Status};

use crate::{
    Error,
    limiter::{Code, Decision, Descriptor, Limiter, Request as LimitRequest},
    rules::{RateLimit, Unit},
};

/// The gRPC face of a [`Limiter`].
#[derive(Debug, Clone)]
pub struct RlsApi {
    limiter: Limiter,
    response_headers: bool,
}

impl RlsApi {
    /// Serves `limiter`; with `response_headers`, answers carry `RateLimit-*` headers to add.
    pub fn new(limiter: Limiter, response_headers: bool) -> Self {
        Self {
            limiter,
            response_headers,
        }
    }
}

/// A server hosting RLS v3 and the Limiter service.
pub fn server(limiter: Limiter, response_headers: bool, server: &ServerConfig) -> GrpcServer {
    let api = RlsApi::new(limiter, response_headers);
    GrpcServer::new("limiter", server)
        .add_service(
            RateLimitServiceServer::new(api.clone())
                .max_decoding_message_size(server.max_message_bytes),
        )
        .add_service(LimiterServer::new(api).max_decoding_message_size(server.max_message_bytes))
}

fn unit_from_envoy(value: i32) -> Result<Unit, Error> {
    Ok(match RateLimitUnit::try_from(value) {
        Ok(RateLimitUnit::Second) => Unit::Second,
        Ok(RateLimitUnit::Minute) => Unit::Minute,
        Ok(RateLimitUnit::Hour) => Unit::Hour,
        Ok(RateLimitUnit::Day) => Unit::Day,
        Ok(RateLimitUnit::Week) => Unit::Week,
        Ok(RateLimitUnit::Month) => Unit::Month,
        Ok(RateLimitUnit::Year) => Unit::Year,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "limit override unit {value} is not a time unit"
            )));
        }
    })
}

fn unit_to_envoy(unit: Unit) -> ResponseUnit {
    match unit {
        Unit::Second => ResponseUnit::Second,
        Unit::Minute => ResponseUnit::Minute,
        Unit::Hour => ResponseUnit::Hour,
        Unit::Day => ResponseUnit::Day,
        Unit::Week => ResponseUnit::Week,
        Unit::Month => ResponseUnit::Month,
        Unit::Year => ResponseUnit::Year,
    }
}

/// An RLS request as the core's.
pub fn request_from_envoy(request: RateLimitRequest) -> Result<LimitRequest, Error> {
    let descriptors = request
        .descriptors
        .into_iter()
        .map(|d: RateLimitDescriptor| {
            Ok(Descriptor {
                entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
                hits: d.hits_addend,
                limit: match d.limit {
                    Some(o) if o.requests_per_unit > 0 => Some(RateLimit {
                        unit: unit_from_envoy(o.unit)?,
                        requests_per_unit: o.requests_per_unit,
                    }),
                    Some(_) => {
                        return Err(Error::InvalidArgument(
                            "limit override of 0 requests".into(),
                        ));
                    }
                    None => None,
                },
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(LimitRequest {
        domain: request.domain,
        descriptors,
        hits_addend: request.hits_addend,
    })
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn code_to_envoy(code: Code) -> i32 {
    match code {
        Code::Ok => rate_limit_response::Code::Ok as i32,
        Code::OverLimit => rate_limit_response::Code::OverLimit as i32,
    }
}

/// A core decision as an RLS answer.
pub fn response_to_envoy(decision: &Decision, headers: bool) -> RateLimitResponse {
    let statuses = decision
        .statuses
        .iter()
        .map(|s| DescriptorStatus {
            code: code_to_envoy(s.code),
            current_limit: s
                .limit
                .as_ref()
                .map(|(limit, name)| rate_limit_response::RateLimit {
                    name: name.clone().unwrap_or_default(),
                    requests_per_unit: limit.requests_per_unit,
                    unit: unit_to_envoy(limit.unit) as i32,
                }),
            limit_remaining: s.remaining,
            duration_until_reset: s.limit.as_ref().and(s.reset).map(proto_duration),
            quota: None,
        })
        .collect();
    let response_headers_to_add = match (headers, decision.tightest()) {
        (true, Some(status)) => {
            let limit = status
                .limit
                .as_ref()
                .map_or(0, |(l, _)| l.requests_per_unit);
            let reset = status.reset.map_or(0, |r| r.as_secs_f64().ceil() as u64);
            [
                ("ratelimit-limit", limit.to_string()),
                ("ratelimit-remaining", status.remaining.to_string()),
                ("ratelimit-reset", reset.to_string()),
            ]
            .into_iter()
            .map(|(key, value)| HeaderValue {
                key: key.into(),
                value,
                raw_value: Vec::new(),
            })
            .collect()
        }
        _ => Vec::new(),
    };
    RateLimitResponse {
        overall_code: code_to_envoy(decision.code),
        statuses,
        response_headers_to_add,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsApi {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request_from_envoy(request.into_inner())?;
        let decision = self.limiter.decide(&request).await?;
        Ok(Response::new(response_to_envoy(
            &decision,
            self.response_headers,
        )))
    }
}

fn rule_views(limiter: &Limiter, domain: &str) -> ListRulesResponse {
    let rules = limiter.rules();
    let mut views = Vec::new();
    let mut domains: Vec<_> = rules
        .domains()
        .filter(|d| domain.is_empty() || d.name == domain)
        .collect();
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    for d in domains {
        for rule in d.rules() {
            views.push(RuleView {
                domain: d.name.clone(),
                path: rule.path.clone(),
                requests_per_unit: rule.limit.map_or(0, |l| l.requests_per_unit),
                unit: rule.limit.map_or("", |l| l.unit.as_str()).to_owned(),
                algorithm: rule.algorithm.as_str().to_owned(),
                unlimited: rule.unlimited,
                shadow_mode: rule.shadow_mode,
                name: rule.name.clone().unwrap_or_default(),
            });
        }
    }
    ListRulesResponse {
        rules: views,
        digest: rules.digest.clone(),
    }
}

#[tonic::async_trait]
impl LimiterRpc for RlsApi {
    async fn list_rules(
        &self,
        request: Request<ListRulesRequest>,
    ) -> Result<Response<ListRulesResponse>, Status> {
        Ok(Response::new(rule_views(
            &self.limiter,
            &request.into_inner().domain,
        )))
    }

    async fn reload_rules(
        &self,
        _: Request<ReloadRulesRequest>,
    ) -> Result<Response<ListRulesResponse>, Status> {
        self.limiter.reload()?;
        Ok(Response::new(rule_views(&self.limiter, "")))
    }
}
