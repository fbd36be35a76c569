//! Bearer API keys: every operation names the scheme, so the OpenAPI document shows it and
//! generated clients send it.

use crate::GatewayState;
use crate::error::ApiError;
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use velour_db::keys::AuthenticatedKey;

/// An API key sent as `Authorization: Bearer KEY`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "check_key")]
pub struct ApiKeyAuth(pub AuthenticatedKey);

async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<AuthenticatedKey> {
    let state = req.data::<GatewayState>().ok_or_else(|| {
        poem::Error::from(ApiError::internal(&"gateway state missing from the request"))
    })?;
    match velour_db::keys::authenticate(&state.pool, bearer.token.trim()).await {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(ApiError::unauthorized().into()),
        Err(err) => Err(ApiError::from_db(err, "key").into()),
    }
}

impl ApiKeyAuth {
    pub fn require_read(&self) -> Result<&AuthenticatedKey, ApiError> {
        if self.0.can_read { Ok(&self.0) } else { Err(ApiError::forbidden("can_read")) }
    }

    pub fn require_stream(&self) -> Result<&AuthenticatedKey, ApiError> {
        if self.0.can_stream { Ok(&self.0) } else { Err(ApiError::forbidden("can_stream")) }
    }

    pub fn require_admin(&self) -> Result<&AuthenticatedKey, ApiError> {
        if self.0.is_admin { Ok(&self.0) } else { Err(ApiError::forbidden("admin")) }
    }
}
