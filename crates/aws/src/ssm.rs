//! SSM Parameter Store on the SDK.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_ssm::types::ParameterType;

use super::{classify, Traced};
use runner_updater_ports::{walk_pages, AwsOp};
use runner_updater_ports::{
    ErrorKind, Parameter, ParameterPage, ParameterStore, PortError, PARAMETERS_PAGE_MAX,
};

/// SSM through the SDK.
#[derive(Debug, Clone)]
pub struct AwsSsm {
    client: aws_sdk_ssm::Client,
}

impl AwsSsm {
    /// Wraps a client.
    #[must_use]
    pub fn new(client: aws_sdk_ssm::Client) -> Self {
        AwsSsm { client }
    }
}

#[async_trait]
impl ParameterStore for AwsSsm {
    async fn get_by_path(&self, path: &str) -> Result<BTreeMap<String, String>, PortError> {
        walk_pages(self, path).await
    }

    async fn get_page(&self, path: &str, token: Option<&str>) -> Result<ParameterPage, PortError> {
        let page = self
            .client
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .max_results(i32::try_from(PARAMETERS_PAGE_MAX).unwrap_or(10))
            .set_next_token(token.map(str::to_owned))
            .send()
            .traced(AwsOp::GetParametersByPath)
            .await
            .map_err(|e| classify(AwsOp::GetParametersByPath, &e))?;
        Ok(ParameterPage {
            parameters: page
                .parameters()
                .iter()
                .filter_map(|p| Some((p.name()?.to_owned(), p.value()?.to_owned())))
                .collect(),
            next: page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    async fn get(&self, name: &str) -> Result<Option<Parameter>, PortError> {
        match self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .traced(AwsOp::GetParameter)
            .await
        {
            Ok(output) => Ok(output.parameter().and_then(|p| {
                Some(Parameter {
                    value: p.value()?.to_owned(),
                    version: u64::try_from(p.version()).unwrap_or(0),
                })
            })),
            Err(error) => {
                let error = classify(AwsOp::GetParameter, &error);
                if error.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn put(&self, name: &str, value: &str, overwrite: bool) -> Result<u64, PortError> {
        let output = self
            .client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(overwrite)
            .send()
            .traced(AwsOp::PutParameter)
            .await
            .map_err(|e| classify(AwsOp::PutParameter, &e))?;
        Ok(u64::try_from(output.version()).unwrap_or(0))
    }

    async fn delete(&self, name: &str) -> Result<(), PortError> {
        match self
            .client
            .delete_parameter()
            .name(name)
            .send()
            .traced(AwsOp::DeleteParameter)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => match classify(AwsOp::DeleteParameter, &error) {
                e if e.kind == ErrorKind::NotFound => Ok(()),
                e => Err(e),
            },
        }
    }
}
