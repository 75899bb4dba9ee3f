<#
.SYNOPSIS
    Registers a scheduled task that starts RAPL (`python -m rapl`) when you log on.

.DESCRIPTION
    The task runs `python -m rapl` in the RAPL checkout, hidden, with its output appended
    to %LOCALAPPDATA%\rapl\rapl.log, and restarts it (up to 999 times, a minute apart) if
    it stops. Settings come from .env in the checkout (see .env.example).

    Run it from PowerShell in the checkout:
        powershell -ExecutionPolicy Bypass -File deploy\windows\install-task.ps1
    If Windows answers "Access is denied", run that from an elevated PowerShell
    ("Run as administrator"); the task still runs as you, without elevation.

    Then:   Start-ScheduledTask -TaskName RAPL          (start now; logon does it later)
            Get-Content "$env:LOCALAPPDATA\rapl\rapl.log" -Wait
            Invoke-RestMethod http://127.0.0.1:8000/health
    Remove: Unregister-ScheduledTask -TaskName RAPL -Confirm:$false

    The same task from cmd.exe in one line (visible console window, no log file, no restarts;
    replace C:\path\to\rapl with your checkout):
        schtasks /Create /F /TN RAPL /SC ONLOGON /RL LIMITED /TR "cmd.exe /c cd /d C:\path\to\rapl && .venv\Scripts\python.exe -m rapl"

.PARAMETER RaplDir
    The RAPL checkout (default: two directories above this script).
.PARAMETER Python
    The python.exe with RAPL's requirements (default: RaplDir\.venv\Scripts\python.exe if it
    exists, else the python on PATH).
.PARAMETER TaskName
    The scheduled task's name (default: RAPL).
#>
[CmdletBinding()]
param(
    [string]$RaplDir = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path,
    [string]$Python = "",
    [string]$TaskName = "RAPL"
)

$ErrorActionPreference = "Stop"

if (-not (Test-Path (Join-Path $RaplDir "rapl\__main__.py"))) {
    throw "$RaplDir is not a RAPL checkout (no rapl\__main__.py); pass -RaplDir C:\path\to\rapl"
}
if (-not $Python) {
    $venvPython = Join-Path $RaplDir ".venv\Scripts\python.exe"
    if (Test-Path $venvPython) {
        $Python = $venvPython
    } else {
        $found = Get-Command python.exe -ErrorAction SilentlyContinue
        if (-not $found) { throw "No python.exe found: install Python 3.10+ or pass -Python C:\path\to\python.exe" }
        $Python = $found.Source
    }
}
if ($RaplDir.Contains("'") -or $Python.Contains("'")) {
    throw "Paths with an apostrophe are not supported by this script; move the checkout or use the schtasks line."
}

$logDir = Join-Path $env:LOCALAPPDATA "rapl"
New-Item -ItemType Directory -Force -Path $logDir | Out-Null
$log = Join-Path $logDir "rapl.log"

# PowerShell as a hidden host, so no console window stays open; *>> appends stdout and stderr.
$command = "Set-Location -LiteralPath '$RaplDir'; `$env:PYTHONUNBUFFERED = '1'; `$env:PROGRESS = 'false'; " +
           "& '$Python' -m rapl *>> '$log'; exit `$LASTEXITCODE"
$action = New-ScheduledTaskAction -Execute "powershell.exe" -WorkingDirectory $RaplDir `
    -Argument "-NoProfile -NonInteractive -WindowStyle Hidden -ExecutionPolicy Bypass -Command `"$command`""

$user = "$env:USERDOMAIN\$env:USERNAME"
$trigger = New-ScheduledTaskTrigger -AtLogOn -User $user
$principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Limited
$settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
    -StartWhenAvailable -ExecutionTimeLimit ([TimeSpan]::Zero) `
    -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -MultipleInstances IgnoreNew

Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Principal $principal `
    -Settings $settings -Description "RAPL speech-to-text server: python -m rapl in $RaplDir" -Force | Out-Null

Write-Host "Registered task '$TaskName': $Python -m rapl in $RaplDir at logon; log: $log"
Write-Host "Start it now with: Start-ScheduledTask -TaskName $TaskName"
