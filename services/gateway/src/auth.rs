//! Bearer API keys: every operation names the scheme, so the OpenAPI document shows it and
//! generated clients send it.

use crate::GatewayState;
use crate::error::ApiError;
use crate::ratelimit::PreAuthenticated;
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use velour_db::keys::{AuthenticatedKey, KeyRefusal};

/// An API key sent as `Authorization: Bearer KEY`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "check_key")]
pub struct ApiKeyAuth(pub AuthenticatedKey);

/// An API key whose user is an administrator, as `Authorization: Bearer KEY`. Checked
/// before the request body is read, so keys without the right cannot make us read one.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "check_admin_key")]
pub struct AdminKeyAuth(pub AuthenticatedKey);

async fn check_admin_key(req: &Request, bearer: Bearer) -> poem::Result<AuthenticatedKey> {
    let key = check_key(req, bearer).await?;
    if key.is_admin { Ok(key) } else { Err(ApiError::forbidden("admin").into()) }
}

async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<AuthenticatedKey> {
    // The federation middleware already looked this request's key up.
    if let Some(PreAuthenticated(key)) = req.extensions().get::<PreAuthenticated>() {
        return Ok(key.clone());
    }
    let state = req.data::<GatewayState>().ok_or_else(|| {
        poem::Error::from(ApiError::internal(&"gateway state missing from the request"))
    })?;
    match velour_db::keys::authenticate(&state.pool, bearer.token.trim()).await {
        Ok(Ok(key)) => Ok(key),
        Ok(Err(refusal)) => {
            if refusal != KeyRefusal::Unknown {
                tracing::info!(?refusal, "a known API key was refused");
            }
            Err(ApiError::key_refused(refusal).into())
        }
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
}
